"""The audit trail: every image access (allowed or denied) and every membership change, one JSON line each.

Not a level of the application log: ``LOG_LEVEL=WARNING`` (or ERROR) quiets the service, never the audit.
The lines go through their own stdlib logger, ``chat_core.audit``, fixed at INFO, with its own handler and
no propagation, so neither the root logger's level nor its handlers (nor structlog's level filter) reach
it. ``configure_logging`` points it at the same stream as the other logs; each line carries
``"audit": true`` so a collector can route it to longer retention.
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

AUDIT_LOGGER = "chat_core.audit"
_logger = logging.getLogger(AUDIT_LOGGER)


class _AuditHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.stream: BinaryIO | None = None  # None: the process's stdout at the time of writing
        self.service = "chat-management"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = dict(getattr(record, "audit_fields", {}))
            line = {
                "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
                "level": "info",
                "audit": True,
                "service": self.service,
                "event": record.getMessage(),
                **redact(fields),
            }
            out = self.stream if self.stream is not None else sys.stdout.buffer
            out.write(msgspec.json.encode(line, enc_hook=str) + b"\n")
            out.flush()
        except Exception:  # pragma: no cover - an audit line must never fail a request
            self.handleError(record)


_handler = _AuditHandler()
_logger.handlers[:] = [_handler]
_logger.setLevel(logging.INFO)
_logger.propagate = False


def configure_audit(stream: BinaryIO | None = None, *, service: str | None = None) -> None:
    """Where audit lines go (default: stdout), and the service they are written by."""
    _handler.stream = stream
    if service:
        _handler.service = service
    # Whatever configured logging before us, the audit logger stays ours and stays on.
    _logger.handlers[:] = [_handler]
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
    _logger.disabled = False


def audit(event: str, **fields: Any) -> None:
    """Write one audit line (``event`` plus ``fields`` and the current trace id)."""
    trace_id = tracing.current_trace_id()
    if trace_id and "trace_id" not in fields:
        fields["trace_id"] = trace_id
    _logger.info(event, extra={"audit_fields": fields})
