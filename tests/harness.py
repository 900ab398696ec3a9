"""Real backends for the tests: Redis, LocalStack (S3 + SQS, signature validation on), Firestore emulator.

Each backend comes, in this order, from
1. its environment variable (``REDIS_URL``, ``AWS_ENDPOINT_URL``, ``FIRESTORE_EMULATOR_HOST``);
2. testcontainers, when a Docker engine answers;
3. a local process on a free port, started here and stopped by PID (recipes in DEVELOPERS.md).

A backend that cannot be had is reported loudly once and only the tests that need it skip.
Local processes are restartable (``stop()``/``start()`` on the same port), for outage tests.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chat_devstack as devstack
from chat_devstack import (
    LOCALSTACK_ENV,
    Backend,
    free_port,
    kill_group,
    reset_firestore,
    start_local_firestore,
    start_local_redis,
    start_local_redis_cluster,
    wait_until,
)

if TYPE_CHECKING:
    from chat_core.jobqueue import JobKind
    from chat_core.settings import Settings

__all__ = [
    "FACTORIES",
    "Backend",
    "docker_engine_available",
    "free_port",
    "kill_group",
    "loud",
    "provision",
    "provision_queue",
    "reset_firestore",
    "start_local_firestore",
    "start_local_localstack",
    "start_local_redis",
    "start_local_redis_cluster",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent
LOCALSTACK_VENV = Path(os.environ.get("LOCALSTACK_VENV", ROOT / ".venv-localstack"))


@functools.cache
def docker_engine_available() -> bool:
    if os.environ.get("CHAT_TESTS_NO_DOCKER"):
        return False
    if shutil.which("docker") is None and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        # By name: the repo's own docker/ folder would shadow the package for mypy.
        docker: Any = importlib.import_module("docker")
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


def redis_backend() -> Backend:
    if url := os.environ.get("REDIS_URL"):
        return Backend("redis", "env", url, "REDIS_URL")
    if docker_engine_available():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7-alpine").start()
        url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return Backend("redis", "testcontainers", url, _stop=container.stop)
    return start_local_redis()


def redis_cluster_backend() -> Backend:
    """A Redis Cluster (3 primaries, a replica each): ``REDIS_CLUSTER_URL`` (any node), else local processes.

    Local processes only (no testcontainers): the nodes announce their own addresses, which must be the
    ones the tests reach.
    """
    if url := os.environ.get("REDIS_CLUSTER_URL"):
        return Backend("redis-cluster", "env", url, "REDIS_CLUSTER_URL")
    return start_local_redis_cluster(3)


# --- LocalStack (S3 + SQS) -------------------------------------------------------------------------
def start_local_localstack(port: int | None = None) -> Backend:
    return devstack.start_local_localstack(port, LOCALSTACK_VENV)


def localstack_backend() -> Backend:
    if url := os.environ.get("AWS_ENDPOINT_URL"):
        return Backend("localstack", "env", url, "AWS_ENDPOINT_URL")
    if docker_engine_available():
        from testcontainers.localstack import LocalStackContainer

        container = LocalStackContainer("localstack/localstack:4.14.0").with_services("s3", "sqs")
        for key, value in LOCALSTACK_ENV.items():
            container = container.with_env(key, value)
        container.start()
        return Backend("localstack", "testcontainers", container.get_url(), _stop=container.stop)
    return start_local_localstack()


# --- Firestore emulator ----------------------------------------------------------------------------
def firestore_backend() -> Backend:
    if host := os.environ.get("FIRESTORE_EMULATOR_HOST"):
        return Backend("firestore", "env", host, "FIRESTORE_EMULATOR_HOST")
    if docker_engine_available():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (
            DockerContainer("gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators")
            .with_command("gcloud emulators firestore start --host-port=0.0.0.0:8080")
            .with_exposed_ports(8080)
            .start()
        )
        wait_for_logs(container, "Dev App Server is now running", timeout=60)
        address = f"{container.get_container_host_ip()}:{container.get_exposed_port(8080)}"
        return Backend("firestore", "testcontainers", address, _stop=container.stop)
    return start_local_firestore()


FACTORIES = {
    "redis": redis_backend,
    "redis-cluster": redis_cluster_backend,
    "localstack": localstack_backend,
    "firestore": firestore_backend,
}


def loud(line: str) -> None:
    print(f"\n!!! {line}", file=sys.stderr, flush=True)


async def provision(settings: Settings) -> None:
    """The bucket and the queues these settings use, made the one way there is (``chat-management setup``)."""
    from chat_management import provision as cloud

    await asyncio.to_thread(cloud.provision, settings)


async def provision_queue(settings: Settings, kind: JobKind[Any]) -> None:
    """One queue of a kind a test made up (its own names, visibility, receives), the same way."""
    from chat_management import provision as cloud

    await asyncio.to_thread(cloud.provision_queue, settings, kind)
