"""The audit trail: every image access (allowed or denied) and every membership change, one JSON line each.

Not a level of the application log: ``LOG_LEVEL=WARNING`` (or ERROR) quiets the service, never the audit.
The lines are written straight to their stream, through no logger, so neither the root logger's level nor
its handlers (nor structlog's level filter) reach them. ``configure_logging`` points them at the same
stream as the other logs; each line carries ``"audit": true`` so a collector can route it to longer
retention.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, BinaryIO

import msgspec

from chat_core import tracing
from chat_core.redaction import redact

__all__ = ["AUDIT_LOGGER", "audit", "configure_audit"]

AUDIT_LOGGER = "chat_core.audit"  # the ``logger`` a collector can route on is the ``"audit": true`` field


class _AuditLines:
    """Where audit lines go. Not a stdlib logger: no level, filter or handler anyone configures (the
    root's, LOG_LEVEL, a library's ``logging.disable``) can silence them, and a line costs no
    ``LogRecord`` (the image proxy writes one per request: ~15 µs through ``logging``, ~5 µs here)."""

    __slots__ = ("service", "stream")

    def __init__(self) -> None:
        self.stream: BinaryIO | None = None  # None: the process's stdout at the time of writing
        self.service = "chat-management"


_lines = _AuditLines()


def configure_audit(stream: BinaryIO | None = None, *, service: str | None = None) -> None:
    """Where audit lines go (default: stdout), and the service they are written by."""
    _lines.stream = stream
    if service:
        _lines.service = service


def audit(event: str, **fields: Any) -> None:
    """Write one audit line (``event`` plus ``fields`` and the current trace id)."""
    trace_id = tracing.current_trace_id()
    if trace_id and "trace_id" not in fields:
        fields["trace_id"] = trace_id
    try:
        line = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "level": "info",
            "audit": True,
            "service": _lines.service,
            "event": event,
            **redact(fields),
        }
        out = _lines.stream if _lines.stream is not None else sys.stdout.buffer
        out.write(msgspec.json.encode(line, enc_hook=str) + b"\n")
        out.flush()
    except Exception:  # an audit line must never fail a request
        logging.getLogger(AUDIT_LOGGER).exception("audit_line_failed", extra={"event": event})
