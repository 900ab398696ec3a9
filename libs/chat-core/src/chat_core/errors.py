"""RFC 9457 problem details with a stable machine-readable ``code``.

Handlers raise ``ProblemError`` (or a subclass); the exception handlers here turn it, Litestar's own
HTTP errors and request-validation failures into ``application/problem+json``. An error an adapter
recognises as an outage of its backend (``ReportsOutages``: unreachable, locked, overloaded) becomes a 503
with ``Retry-After`` and the adapter's code (``store_unavailable``). Anything else unexpected becomes a 500
that carries the trace id and nothing of the stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Protocol, runtime_checkable

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from chat_core import tracing

__all__ = [
    "PROBLEM_JSON",
    "FieldError",
    "ProblemDetails",
    "ProblemError",
    "ReportsOutages",
    "exception_handlers",
    "outage_handlers",
    "problem_response",
    "problem_responses",
]

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = "2"  # on every 503: an outage of a backend is worth a retry a little later
PROBLEM_TYPE_BASE = "https://chat-management.dev/problems/"

_log = structlog.get_logger("chat_core.errors")


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class ProblemDetails(msgspec.Struct, frozen=True, omit_defaults=True):
    """The body of every error (RFC 9457), as documented in the OpenAPI of each service."""

    type: str
    title: str
    status: int
    code: str  # stable and machine-readable: branch on this
    detail: str | None = None
    instance: str | None = None
    trace_id: str | None = None
    errors: list[FieldError] | None = None  # request validation: the bad fields
    index: int | None = None  # an album's failing image (0-based), when the problem is one image's


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route answers with, all ``application/problem+json``."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            description=HTTPStatus(status).phrase + " (problem details; see `code`)",
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }


class ProblemError(Exception):
    """An error the client should see as a problem-details response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str | None,
    instance: str | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + code, "title": title, "status": status, "code": code}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    trace_id = tracing.current_trace_id()
    if trace_id:
        body["trace_id"] = trace_id
    if extra:
        body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response[bytes]:
    body = problem_body(status, code, title or HTTPStatus(status).phrase, detail, instance, extra)
    all_headers = dict(headers or {})
    if status == 503 and not any(name.lower() == "retry-after" for name in all_headers):
        all_headers["Retry-After"] = RETRY_AFTER_SECONDS  # a backend outage: clients back off, then retry
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=all_headers,
    )


def _handle_problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[bytes]:
    return problem_response(  # every 503 gets Retry-After there
        exc.status,
        exc.code,
        exc.detail,
        instance=request.url.path,
        title=exc.title,
        headers=exc.headers,
        extra=exc.extra,
    )


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            field = str(item.get("key") or item.get("source") or "body")
            errors.append({"field": field, "message": str(item.get("message", ""))})
    return errors


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "service_unavailable",
}


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or exc.detail
        return problem_response(
            400,
            "invalid_request",
            detail,
            instance=request.url.path,
            title="Invalid request",
            extra={"errors": errors},
        )
    status = exc.status_code
    if status >= 500:
        return _handle_unexpected(request, exc)
    if isinstance(exc.__cause__, SerializationException):  # the body is not JSON at all
        return problem_response(
            400,
            "invalid_json",
            f"the body is not valid JSON: {exc.detail}",
            instance=request.url.path,
            title="Invalid JSON",
        )
    return problem_response(
        status,
        _HTTP_CODES.get(status, f"http_{status}"),
        exc.detail if exc.detail != HTTPStatus(status).phrase else None,
        instance=request.url.path,
        headers=exc.headers,
    )


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    _log.error("unhandled_error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
    return problem_response(
        500,
        "internal_error",
        "An unexpected error occurred; quote the trace_id when reporting it.",
        instance=request.url.path,
    )


exception_handlers: ExceptionHandlersMap = {
    ProblemError: _handle_problem,
    HTTPException: _handle_http,
    Exception: _handle_unexpected,
}


@runtime_checkable
class ReportsOutages(Protocol):
    """An adapter that tells an outage of its backend (worth a retry a little later) from a bug.

    ``outage_errors``: the exception types its client raises for either; ``is_outage`` decides which an
    instance is; ``outage_code``: the 503's ``code``.
    """

    outage_code: str
    outage_errors: tuple[type[Exception], ...]

    def is_outage(self, exc: Exception) -> bool: ...


def outage_handlers(reporters: Sequence[ReportsOutages]) -> ExceptionHandlersMap:
    """Exception handlers answering an outage of a backend with a 503 problem (``Retry-After``), else 500."""

    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        for reporter in reporters:
            if isinstance(exc, reporter.outage_errors) and reporter.is_outage(exc):
                _log.warning(
                    "backend_unavailable",
                    code=reporter.outage_code,
                    path=request.url.path,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                return problem_response(
                    503,
                    reporter.outage_code,
                    "a backend is unavailable; retry shortly",
                    instance=request.url.path,
                )
        return _handle_unexpected(request, exc)

    return {error: handle for reporter in reporters for error in reporter.outage_errors}
