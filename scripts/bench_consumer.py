"""Notification consumer throughput: queue messages (and pushes) per second with the log push provider.

    uv run python scripts/bench_consumer.py --queue sqlite [--notifications 5000] [--concurrency 32]
    uv run python scripts/bench_consumer.py --queue sqs --endpoint http://127.0.0.1:4566

Fills the queue first (not timed), then runs the real consumer (the same worker the service runs: queue
receive, device lookup and push claims in the SQLite message store, the log provider rendering one JSON
line per push to /dev/null, acks) until every message is acked, and prints the rate. SQS needs LocalStack
(or real SQS: then mind the bill); fresh queue names are used each run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
import uuid
from typing import BinaryIO

import uvloop

import notification_consumer.app
from chat_core import metrics
from chat_core.chatstore import Device
from chat_core.composition import Composition
from chat_core.logging import configure_logging
from chat_core.notifications import Notification
from chat_core.settings import load_settings
from notification_consumer.consumer import NotificationConsumer


def pushes_sent() -> float:
    # This one counter only: REGISTRY-wide lookups would also read /proc each time (process metrics).
    [family] = metrics.NOTIFICATIONS_SENT.collect()
    return sum(
        s.value for s in family.samples if s.name.endswith("_total") and s.labels == {"provider": "log"}
    )


async def run(args: argparse.Namespace, log_sink: BinaryIO) -> None:
    data_dir = tempfile.mkdtemp(prefix="bench-consumer-")
    env = {
        "AUTH_JWT_SECRET": "x" * 32,
        "DATA_DIR": data_dir,
        "NOTIFICATION_QUEUE": args.queue,
        "PUSH_PROVIDER": "log",
        "NOTIFICATION_CONCURRENCY": str(args.concurrency),
        "SQS_WAIT_SECONDS": "1",
        "LOG_LEVEL": "INFO",
    }
    if args.queue == "sqs":
        name = f"bench-{uuid.uuid4().hex[:8]}"
        env |= {
            "AWS_ENDPOINT_URL": args.endpoint,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            "SQS_QUEUE_NAME": name,
            "SQS_DLQ_NAME": f"{name}-dlq",
        }
    settings = load_settings(env)
    configure_logging("INFO", service="bench", stream=log_sink)
    backends = Composition(settings)
    consumer = NotificationConsumer.from_ports(settings, notification_consumer.app.ports(backends))
    async with backends:
        store, queue = backends.chat_store, backends.notification_queue
        now = dt.datetime.now(dt.UTC)
        users = [f"user-{n}" for n in range(args.notifications * args.recipients)]
        for user in users:
            for d in range(args.devices):
                token = f"{user}-device-{d}-{'x' * 140}"  # FCM tokens are ~150 characters
                await store.put_device(Device(token=token, platform="android", user_id=user, updated_at=now))
        jobs = []
        for n in range(args.notifications):
            message_id = str(uuid.uuid4())
            jobs.append(
                Notification(
                    notification_id=f"{message_id}:0",
                    conversation_id="c-bench",
                    message_id=message_id,
                    sender_id="alice",
                    message_type="image",
                    preview="Check out this photo!",
                    recipient_ids=tuple(users[n * args.recipients : (n + 1) * args.recipients]),
                    created_at=now,
                )
            )
        for start in range(0, len(jobs), 100):
            await queue.send(jobs[start : start + 100])
        expected = args.notifications * args.recipients * args.devices
        before = pushes_sent()
        started = time.perf_counter()
        async with consumer.worker():
            while pushes_sent() - before < expected:  # noqa: ASYNC110 - a metric: nothing to await
                await asyncio.sleep(0.01)
            while (await queue.depth())[0] > 0:  # noqa: ASYNC110 - the last acks
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
    print(
        f"queue={args.queue} concurrency={args.concurrency} notifications={args.notifications} "
        f"recipients/notification={args.recipients} devices/recipient={args.devices}: "
        f"{args.notifications / elapsed:,.0f} notifications/s, {expected / elapsed:,.0f} pushes/s "
        f"({elapsed:.2f} s)",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queue", choices=["sqlite", "sqs"], default="sqlite")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    parser.add_argument("--notifications", type=int, default=5000)
    parser.add_argument("--recipients", type=int, default=1, help="recipients per queue message")
    parser.add_argument("--devices", type=int, default=1, help="devices per recipient")
    parser.add_argument("--concurrency", type=int, default=32)
    with open(os.devnull, "wb") as log_sink:
        uvloop.run(run(parser.parse_args(), log_sink))


if __name__ == "__main__":
    main()
