"""JobQueue port: durable work for a background worker, generic over the job it carries.

One port, one contract suite (``tests/contract/test_queue_contract.py``), as many queues as there are kinds
of job: a ``JobKind`` names the job type and its queue (SQS names, receives before the dead-letter queue,
visibility timeout). The notification queue is ``JobQueue[Notification]`` built from
``chat_core.notifications.notification_jobs(settings)``; another kind of job is another ``JobKind``.

Adapters: ``sqs`` (long poll, visibility timeout, redrive to a DLQ, trace context in message attributes)
and ``sqlite`` (embedded, one file per kind under ``DATA_DIR``, same semantics).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import msgspec

__all__ = ["Job", "JobKind", "JobQueue", "Received"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """What every job carries besides its own fields: the W3C trace context of the work that queued it.

    The adapters send it beside the body (SQS message attributes), so a job's trace joins the sender's.
    """

    trace: dict[str, str] = {}


J = TypeVar("J", bound=Job)


@dataclass(frozen=True)
class JobKind(Generic[J]):
    """One queue: what it carries and how it is configured."""

    name: str  # "notification": log events, the readiness check ("notification_queue"), the SQLite file
    job_type: type[J]
    queue_name: str  # SQS
    dlq_name: str  # SQS
    max_receives: int  # deliveries before a job moves to the dead-letter queue
    visibility_timeout_seconds: int  # how long a received job stays hidden

    @property
    def readiness_name(self) -> str:
        return f"{self.name}_queue"


class Received(msgspec.Struct, Generic[J], frozen=True, kw_only=True):
    job: J
    receipt: str  # handle for ack / retry_later
    receive_count: int  # 1 on first delivery
    enqueued_at: dt.datetime


class JobQueue(Protocol[J]):
    name: str  # "sqs" or "sqlite"
    readiness_name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def send(self, jobs: Sequence[J]) -> None:
        """Enqueue durably (batched); raises when the queue cannot take them."""

    async def receive(self, *, max_messages: int, wait_seconds: float) -> list[Received[J]]:
        """Long poll; received messages stay hidden for the visibility timeout."""

    def end_receives(self) -> None:
        """Make the receives now waiting in this process return what they have (shutdown).

        SQS has nothing to do: its long poll returns by itself within ``wait_seconds``, and cancelling it
        could hide a message the server was handing to it. The SQLite queue's waits return at once.
        """

    async def ack(self, receipt: str) -> None:
        """Done: delete the message."""

    async def retry_later(self, receipt: str, delay_seconds: float) -> None:
        """Make the message visible again after ``delay_seconds`` (it counts as another receive)."""

    async def depth(self) -> tuple[int, int]:
        """Approximate (visible + in-flight messages in the main queue, messages in the DLQ)."""
