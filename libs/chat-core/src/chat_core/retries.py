"""Retries of calls to backends: full-jitter exponential backoff within a budget, driven by ``stamina``.

A call is tried again only on a transient failure: an answer 5xx or 429, an AWS throttling code
(``SlowDown``, ``Throttling``, ``ThrottlingException``, ``RequestLimitExceeded``, ...) whatever its status,
or a connection that failed (refused, reset, connect/read timeout). A 4xx client error is never retried.
Each pause is drawn uniformly from ``[0, min(cap, base * 2**n))`` ("full jitter": many clients retrying
at once do not come back in step), and the budget bounds both the attempts and the total time: a retry
whose pause would end past the budget is not made. Every retry counts in ``chat_backend_retries_total``.

The transports decide what an answer means (``RetryableAnswer`` carries it); when the budget runs out on
such an answer, the caller gets the answer itself back and handles it as it would have without retries.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import httpx
import stamina

from chat_core.metrics import BACKEND_RETRIES

__all__ = [
    "THROTTLING_CODES",
    "RetryBudget",
    "RetryableAnswer",
    "aws_error_code",
    "failure_reason",
    "retrying",
    "status_reason",
]

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "AWS.SimpleQueueService.RequestThrottled",
        "KMS.ThrottlingException",
    }
)
# The error code of an S3 (XML) or JSON-protocol (``__type``) error body.
_CODE = re.compile(rb'<Code>([^<]{1,128})</Code>|"__type"\s*:\s*"(?:[^"#]{0,256}#)?([^"]{1,128})"')


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """At most ``attempts`` tries within ``seconds``; pauses of full jitter over ``base * 2**n``, capped."""

    attempts: int = 4
    seconds: float = 5.0
    base: float = 0.05
    cap: float = 1.0


class RetryableAnswer(Exception):
    """An answer worth another try; ``answer`` is handed back to the caller when the budget runs out."""

    def __init__(self, reason: str, answer: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


def aws_error_code(body: bytes, headers: Mapping[str, str] | None = None) -> str:
    """The AWS error code of an error answer ('' when none is found)."""
    if headers is not None:
        query_error = headers.get("x-amzn-query-error", "")
        if query_error:
            return query_error.partition(";")[0]
    match = _CODE.search(body[:4096])
    if match is None:
        return ""
    return (match[1] or match[2] or b"").decode(errors="replace")


def status_reason(status: int, code: str = "") -> str | None:
    """Why an answer with ``status`` (and AWS error ``code``) is worth another try, or None."""
    if status == 429 or code in THROTTLING_CODES:
        return "throttled"
    if status >= 500:
        return "5xx"
    return None


def failure_reason(exc: BaseException) -> str | None:
    """Why a failed call is worth another try, or None (never for a client error)."""
    if isinstance(exc, RetryableAnswer):
        return exc.reason
    if isinstance(
        exc, aiohttp.ServerTimeoutError | httpx.ConnectTimeout | httpx.ReadTimeout | httpx.PoolTimeout
    ):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | httpx.TransportError):
        return "connection"
    if isinstance(exc, ConnectionError):
        return "connection"
    return None


async def retrying(
    backend: str, operation: str, call: Callable[[], Awaitable[T]], budget: RetryBudget = RetryBudget()
) -> T:
    """``await call()``, tried again on transient failures within ``budget``."""
    started = time.monotonic()
    attempt = 0

    def backoff(exc: Exception) -> bool | float:
        reason = failure_reason(exc)
        if reason is None or attempt >= budget.attempts:
            return False
        pause = random.uniform(0, min(budget.cap, budget.base * 2**attempt))  # noqa: S311 - jitter
        if time.monotonic() - started + pause >= budget.seconds:
            return False
        BACKEND_RETRIES.labels(backend, operation, reason).inc()
        return pause

    async for try_ in stamina.retry_context(
        on=backoff, attempts=budget.attempts, timeout=budget.seconds + budget.cap
    ):
        with try_:
            attempt = try_.num
            return await call()
    raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover
