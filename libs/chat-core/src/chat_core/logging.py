"""structlog JSON logs, one object per line, carrying ``trace_id``/``span_id`` of the active span.

Standard-library loggers (uvicorn, litestar, httpx) are routed through the same renderer, so every
line a service writes is JSON.
"""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import msgspec
import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

from chat_core.audit import configure_audit

__all__ = ["configure_logging"]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def add_trace_ids(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid and "trace_id" not in event_dict:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _json_bytes(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> bytes:
    return msgspec.json.encode(event_dict, enc_hook=str)


def configure_logging(
    level: str = "INFO",
    *,
    service: str = "chat-management",
    stream: BinaryIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog and the stdlib root logger to write JSON lines to ``stream`` (stdout)."""
    out = stream if stream is not None else sys.stdout.buffer
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]

    def add_service(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    structlog.configure(
        processors=[
            *shared,
            add_service,
            structlog.processors.format_exc_info,
            _json_bytes,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )

    class _BytesToText(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            try:
                out.write(self.format(record).encode() + b"\n")
                out.flush()
            except Exception:  # pragma: no cover - logging must never raise
                self.handleError(record)

    handler = _BytesToText()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, add_service, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                lambda _l, _m, event_dict: _json_bytes(_l, _m, event_dict).decode(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    configure_audit(out, service=service)  # its own logger and level: LOG_LEVEL never silences it
    root.setLevel(_LEVELS[level])
    # Our middleware writes the access line; uvicorn's own would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore", "botocore", "urllib3", "google", "grpc", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(_LEVELS[level], logging.WARNING))
