"""The chaos suite's one coupling to how the services are launched (``chat_management.devstack.Stack``,
as the e2e test uses it): the four services as separate processes, their backends reached through our
fault proxies, a webhook receiver standing in for the push provider."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from chat_devstack import Stack
from tests.chaos.faultproxy import FaultProxy, running_proxy
from tests.conftest import TEST_SECRET

__all__ = ["Cluster", "running_cluster"]


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


@dataclass
class Cluster:
    stack: Stack
    proxies: dict[str, FaultProxy]  # redis, localstack, firestore

    def url(self, service: str) -> str:
        return self.stack.url(service)

    async def kill9(self, service: str) -> None:
        process = self.stack.services[service].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)

    async def sigterm(self, service: str) -> int | None:
        process = self.stack.services[service].process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        # Drain (5 s) and the workers stopping: a loaded 2-core runner has taken over 30 s.
        return await asyncio.to_thread(process.wait, 60)

    async def restart(self, service: str) -> None:
        one = self.stack.services[service]
        one.start(self.stack.env())
        await asyncio.to_thread(one.wait_ready, 60)


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    redis: str,
    localstack: str,
    firestore: str,
    webhook_url: str,
    webhook_secret: str,
    workdir: Path,
    suffix: str,
) -> AsyncIterator[Cluster]:
    async with (
        running_proxy(_hostport(redis)) as redis_proxy,
        running_proxy(_hostport(localstack)) as aws_proxy,
        running_proxy(firestore) as firestore_proxy,
    ):
        db = redis.rsplit("/", 1)[-1] if redis.count("/") >= 3 else "0"
        stack = Stack(
            redis_url=f"redis://{redis_proxy.address}/{db}",
            aws_endpoint_url=f"http://{aws_proxy.address}",
            firestore_host=firestore_proxy.address,
            workdir=workdir,
            suffix=suffix,
            extra_env={
                "AUTH_JWT_SECRET": TEST_SECRET,
                "PUSH_PROVIDER": "webhook",
                "PUSH_WEBHOOK_URL": webhook_url,
                "PUSH_WEBHOOK_SECRET": webhook_secret,
                "SQS_WAIT_SECONDS": "1",
                "NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS": "6",
                # A consumer killed between claim and push: its claims lapse within the run's wait for pushes.
                "PUSH_CLAIM_LEASE_SECONDS": "10",
                "SHUTDOWN_DRAIN_SECONDS": "5",
                # Images of 64x48 decode in milliseconds: a short job bound (and so a media job stuck on a
                # backend is given up within 2 x 5 + 60 s and retried, within the run's wait).
                "MEDIA_JOB_TIMEOUT_SECONDS": "5",
                "REQUEST_TIMEOUT_SECONDS": "5",
                "ACCESS_LOG": "false",
                "LOG_LEVEL": "WARNING",
                # One user drives the whole load (and its uploads are granted up front): limits that never
                # refuse it. The limiter still runs on the faulty Redis, so its failing open is exercised.
                "RATE_LIMIT_UPLOAD_URLS": "100000/minute",
                "RATE_LIMIT_SENDS": "100000/minute",
                "MAX_PENDING_UPLOADS": "100000",
                # The other changes of each phase (side conversations made up front, members added/removed).
                "RATE_LIMIT_CONVERSATIONS": "100000/minute",
                "RATE_LIMIT_PARTICIPANT_CHANGES": "100000/minute",
            },
        )
        await asyncio.to_thread(stack.start)
        try:
            yield Cluster(
                stack, {"redis": redis_proxy, "localstack": aws_proxy, "firestore": firestore_proxy}
            )
        finally:
            for proxy in (redis_proxy, aws_proxy, firestore_proxy):
                proxy.set("pass")
            await asyncio.to_thread(stack.stop)
