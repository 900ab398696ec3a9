"""No credential in any log line: tokens, signatures and push device tokens are masked before writing.

Every line goes through ``redact`` (structlog's processors, the stdlib handler that renders uvicorn's,
Litestar's and the libraries' lines, and the audit handler), whatever its level, so a credential that
reaches a log by any road is masked there:

* query parameters that carry one (``access_token=``, ``token=``, ``signature=``, ``X-Amz-Signature=``,
  ``X-Amz-Credential=``, ``X-Amz-Security-Token=``...): uvicorn logs ``WebSocket /ws?access_token=...``,
  and signed URLs carry their signature in the query;
* JWTs anywhere (``eyJ...``.``eyJ...``.``...``) and ``Bearer ...`` values;
* the device token in ``/me/devices/{token}`` paths.

Message text never reaches a log in the first place (the ``log`` push provider writes lengths, not the
text); ``tests/foundation/test_log_secrets.py`` greps a full run of the main flows for every secret and
text it minted.
"""

from __future__ import annotations

import re
from typing import Any

from structlog.types import EventDict, WrappedLogger

__all__ = ["REDACTED", "redact", "redact_event", "redact_text"]

REDACTED = "[redacted]"
_SECRET_PARAMS = (
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "signature",
    "sig",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "googleaccessid",
    "password",
)
_PATTERN = re.compile(
    r"(?P<param>(?:^|(?<=[?&;\s\"'(]))(?:"
    + "|".join(re.escape(p) for p in _SECRET_PARAMS)
    + r")=)[^&\s\"'<>;)]+"
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"
    r"|(?P<bearer>(?i:bearer)\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<device>/me/devices/)[^/?#\s\"'<>]+",
    re.IGNORECASE,
)


def _mask(match: re.Match[str]) -> str:
    for group in ("param", "bearer", "device"):
        prefix = match.group(group)
        if prefix is not None:
            return prefix + REDACTED
    return REDACTED


def redact_text(text: str) -> str:
    """``text`` with every credential it carries masked."""
    # Cheap pre-check: most strings hold none of these hints and skip the regex ("earer": Bearer in any
    # case but its first letter; the pattern decides). Plain ``in`` tests: a generator over a tuple of
    # hints cost ~1 µs a string, on every value of every log line.
    if "=" not in text and "eyJ" not in text and "earer" not in text and "/me/devices/" not in text:
        return text
    return _PATTERN.sub(_mask, text)


def redact(value: Any) -> Any:
    """A log value with its strings masked (in lists, tuples and dicts too)."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    return value


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: every value of the line, the message included."""
    return {key: redact(value) for key, value in event_dict.items()}
