"""SQS JobQueue over the SQS JSON 1.0 protocol, signed by ``chat_core.aws.AwsClient``.

* Two queues per ``JobKind``: the main one with a visibility timeout and a redrive policy (after
  ``max_receives`` receives SQS moves a message to the DLQ), and the DLQ. This adapter only uses them:
  ``chat-management setup`` (``chat_management.provision``) creates and configures both from the same
  ``JobKind``, with credentials allowed ``sqs:CreateQueue`` that the services' roles do not have.
* ``start()`` only resolves the main queue's URL and never fails the start-up: when SQS is unreachable or
  the queue does not exist yet it is resolved on first use (the message service keeps accepting messages;
  its outbox holds the notifications). The DLQ is looked up only by ``depth()``.
* A queue that vanished (LocalStack restarted empty) fails each call with ``QueueDoesNotExist`` (readiness
  reports it) and is looked up again on the next, so the service recovers once setup has run again.
* Trace context travels in message attributes (``traceparent``/``tracestate``), not in the body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import structlog

from chat_core.aws import AwsClient, AwsCredentialSource, AwsError, AwsHttp, aws_endpoint
from chat_core.batching import Coalescer
from chat_core.jobqueue import Job, JobKind, JobQueue, Received
from chat_core.settings import AwsSettings

__all__ = ["SqsJobQueue", "create"]

J = TypeVar("J", bound=Job)
_log = structlog.get_logger("chat_core.jobqueue.sqs")

MAX_BATCH = 10  # SQS: entries per SendMessageBatch / messages per ReceiveMessage
ACK_LINGER_SECONDS = 0.01
MAX_BATCH_BYTES = 256 * 1024  # SQS: a batch's total payload, bodies and attributes together
_SEND_ATTEMPTS = 3
_MISSING_QUEUE = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue"}
_TRACE_KEYS = ("traceparent", "tracestate", "baggage")


def _error(response_status: int, body: bytes, headers: Mapping[str, str]) -> AwsError:
    code, message = "", ""
    try:
        parsed = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        parsed = {}
    if isinstance(parsed, dict):
        code = str(parsed.get("__type", "")).rpartition("#")[2]
        message = str(parsed.get("message") or parsed.get("Message") or "")
    query_error = headers.get("x-amzn-query-error", "")
    if query_error:
        # The legacy code (what the Query protocol reported); some tools key on it.
        legacy = query_error.partition(";")[0]
        if legacy in _MISSING_QUEUE:
            code = "QueueDoesNotExist"
        code = code or legacy
    return AwsError(response_status, code or "Unknown", message or body[:200].decode(errors="replace"))


class SqsJobQueue(JobQueue[J]):
    name = "sqs"
    uses_aws = True

    def __init__(self, kind: JobKind[J], client: AwsClient) -> None:
        self._kind = kind
        # One check per queue: as one "sqs" the media queue's replaced the notification queue's.
        self.readiness_name = kind.readiness_name
        self._body = msgspec.json.Decoder(kind.job_type)
        self._client = client
        self._main_url: str | None = None
        self._dlq_url: str | None = None
        self._resolving = asyncio.Lock()
        self._acks: Coalescer[str] = Coalescer(
            self._delete_batch, max_batch=MAX_BATCH, linger=ACK_LINGER_SECONDS
        )

    # --- protocol -----------------------------------------------------------------------------------
    async def _call(self, operation: str, payload: Mapping[str, Any], *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        response = await self._client.send(
            "POST",
            "/",
            headers={
                "content-type": "application/x-amz-json-1.0",
                "x-amz-target": f"AmazonSQS.{operation}",
            },
            content=msgspec.json.encode(payload),
            timeout=timeout,
            operation=operation,
        )
        if response.status_code != 200:
            raise _error(response.status_code, response.content, response.headers)
        return msgspec.json.decode(response.content) if response.content else {}

    async def _on_queue(
        self, operation: str, payload: Mapping[str, Any], *, dlq: bool = False, **kw: Any
    ) -> Any:
        """Call ``operation`` on a queue; when the queue has vanished, forget its URL and raise."""
        url = await self._url(dlq=dlq)
        try:
            return await self._call(operation, {**payload, "QueueUrl": url}, **kw)
        except AwsError as exc:
            if exc.code in _MISSING_QUEUE:
                # Not recreated here: it would lack the attributes, policy and redrive setup gives it.
                self._main_url = self._dlq_url = None
                _log.warning("sqs_queue_missing", queue=url, fix="run chat-management setup")
            raise

    def _known(self, *, dlq: bool) -> str | None:
        return self._dlq_url if dlq else self._main_url

    async def _url(self, *, dlq: bool = False) -> str:
        # Each queue is looked up only when first used: the message service may only see the main queue
        # (least-privilege IAM), the DLQ matters to the consumer's depth metric alone.
        url = self._known(dlq=dlq)
        if url is None:
            async with self._resolving:
                url = self._known(dlq=dlq) or await self._resolve(dlq=dlq)
        return url

    async def _resolve(self, *, dlq: bool) -> str:
        name = self._kind.dlq_name if dlq else self._kind.queue_name
        try:
            url = str((await self._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"])
        except AwsError as exc:
            if exc.code in _MISSING_QUEUE:
                raise AwsError(
                    exc.status, "QueueDoesNotExist", f"queue {name} does not exist: run chat-management setup"
                ) from None
            raise
        if dlq:
            self._dlq_url = url
        else:
            self._main_url = url
        return url

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._url()
        except Exception as exc:
            _log.warning("sqs_unreachable_at_start", error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await self._acks.close()

    async def ping(self) -> None:
        """Raise unless the queue answers and hides a received job for as long as this worker may hold it.

        A queue made by other settings (setup run without the processor's ``MEDIA_JOB_TIMEOUT_SECONDS``,
        or by infrastructure code) would hand a job still running to a second worker: not Ready.
        """
        attributes = (await self._on_queue("GetQueueAttributes", {"AttributeNames": ["VisibilityTimeout"]}))[
            "Attributes"
        ]
        hidden = int(attributes.get("VisibilityTimeout", 0))
        if hidden < self._kind.visibility_timeout_seconds:
            raise AwsError(
                409,
                "VisibilityTimeoutTooShort",
                f"queue {self._kind.queue_name} hides a job for {hidden} s, this worker needs "
                f"{self._kind.visibility_timeout_seconds} s: run chat-management setup with its settings",
            )

    # --- the port -----------------------------------------------------------------------------------
    async def send(self, jobs: Sequence[J]) -> None:
        entries = [self._entry(str(i), job) for i, job in enumerate(jobs)]
        for batch in _batches(entries):
            await self._send_batch(batch)

    def _entry(self, entry_id: str, job: J) -> dict[str, Any]:
        body = msgspec.json.encode(msgspec.structs.replace(job, trace={})).decode()
        attributes = {
            key: {"DataType": "String", "StringValue": value}
            for key, value in job.trace.items()
            if key in _TRACE_KEYS and value
        }
        entry: dict[str, Any] = {"Id": entry_id, "MessageBody": body}
        if attributes:
            entry["MessageAttributes"] = attributes
        return entry

    async def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        pending = batch
        for attempt in range(1, _SEND_ATTEMPTS + 1):
            result = await self._on_queue("SendMessageBatch", {"Entries": pending})
            failed = {f["Id"]: f for f in result.get("Failed", [])}
            if not failed:
                return
            sender_faults = [f for f in failed.values() if f.get("SenderFault")]
            if sender_faults or attempt == _SEND_ATTEMPTS:
                first = (sender_faults or list(failed.values()))[0]
                raise AwsError(
                    400 if sender_faults else 500, str(first.get("Code")), str(first.get("Message", ""))
                )
            pending = [entry for entry in pending if entry["Id"] in failed]
            await asyncio.sleep(0.05 * 2**attempt)

    async def receive(self, *, max_messages: int, wait_seconds: float) -> list[Received[J]]:
        wait = max(0, min(20, int(wait_seconds)))
        result = await self._on_queue(
            "ReceiveMessage",
            {
                "MaxNumberOfMessages": max(1, min(MAX_BATCH, max_messages)),
                "WaitTimeSeconds": wait,
                "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
                "AttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
                "MessageAttributeNames": list(_TRACE_KEYS),
            },
            timeout=wait + 10.0,
        )
        received: list[Received[J]] = []
        for message in result.get("Messages", []):
            try:
                job = self._body.decode(message["Body"])
            except msgspec.DecodeError:
                # Left alone: once its receives are used up SQS moves it to the DLQ for a human to read.
                _log.error(f"undecodable_{self._kind.name}", message_id=message.get("MessageId"))
                continue
            system = message.get("Attributes", {})
            trace = {
                key: value["StringValue"]
                for key, value in message.get("MessageAttributes", {}).items()
                if key in _TRACE_KEYS and "StringValue" in value
            }
            received.append(
                Received(
                    job=msgspec.structs.replace(job, trace=trace),
                    receipt=message["ReceiptHandle"],
                    receive_count=int(system.get("ApproximateReceiveCount", "1")),
                    enqueued_at=dt.datetime.fromtimestamp(
                        int(system.get("SentTimestamp", "0")) / 1000, dt.UTC
                    ),
                )
            )
        return received

    async def ack(self, receipt: str) -> None:
        # Acks that come within a few milliseconds of each other share one DeleteMessageBatch.
        await self._acks.submit(receipt)

    async def _delete_batch(self, receipts: list[str]) -> list[AwsError | None]:
        entries = [{"Id": str(i), "ReceiptHandle": receipt} for i, receipt in enumerate(receipts)]
        result = await self._on_queue("DeleteMessageBatch", {"Entries": entries})
        failed = {
            f["Id"]: AwsError(
                400 if f.get("SenderFault") else 500, str(f.get("Code")), str(f.get("Message", ""))
            )
            for f in result.get("Failed", [])
        }
        return [failed.get(str(i)) for i in range(len(receipts))]

    def end_receives(self) -> None:
        """Nothing to do: a long poll returns within ``wait_seconds``; cancelling it could hide a message."""

    async def retry_later(self, receipt: str, delay_seconds: float) -> None:
        delay = max(0, min(43200, round(delay_seconds)))
        await self._on_queue(
            "ChangeMessageVisibility", {"ReceiptHandle": receipt, "VisibilityTimeout": delay}
        )

    async def depth(self) -> tuple[int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        main = (await self._on_queue("GetQueueAttributes", {"AttributeNames": names}))["Attributes"]
        dead = (await self._on_queue("GetQueueAttributes", {"AttributeNames": names[:1]}, dlq=True))[
            "Attributes"
        ]
        return (
            int(main.get(names[0], 0)) + int(main.get(names[1], 0)),
            int(dead.get(names[0], 0)),
        )


def _batches(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Up to 10 entries and 256 KiB per batch."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        entry_size = len(entry["MessageBody"].encode()) + sum(
            len(k) + len(v["DataType"]) + len(v["StringValue"])
            for k, v in entry.get("MessageAttributes", {}).items()
        )
        if current and (len(current) == MAX_BATCH or size + entry_size > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry_size
    if current:
        batches.append(current)
    return batches


def create(
    aws: AwsSettings, kind: JobKind[J], *, http: AwsHttp, credentials: AwsCredentialSource
) -> SqsJobQueue[J]:
    """The queue of ``kind`` in SQS, signed with ``credentials`` over the process's shared ``http``."""
    endpoint = aws_endpoint("sqs", aws.region, override=aws.sqs_endpoint_url or aws.endpoint_url)
    client = AwsClient(aws, "sqs", endpoint_url=endpoint, http=http, credentials=credentials)
    return SqsJobQueue(kind, client)
