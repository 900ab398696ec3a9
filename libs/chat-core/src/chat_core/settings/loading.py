"""Reading settings from the environment, and the table of every variable (``make docs``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import msgspec

from chat_core.settings.base import SettingsError
from chat_core.settings.root import Settings

T = TypeVar("T", bound=msgspec.Struct)


def _env_name(hint: Any) -> str | None:
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.extra and "env" in meta.extra:
            return str(meta.extra["env"])
    return None


def _is_sequence(hint: Any) -> bool:
    base = get_args(hint)[0] if get_origin(hint) is Annotated else hint
    return get_origin(base) in (tuple, list)


def _load_struct(cls: type[T], environ: Mapping[str, str]) -> T:
    hints = get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        hint = hints[field.name]
        name = _env_name(hint)
        if name is None:  # a nested concern
            values[field.name] = _load_struct(hint, environ)
            continue
        raw = environ.get(name)
        if raw is None or (raw.strip() == "" and not _is_sequence(hint)):
            continue
        value: Any = [part.strip() for part in raw.split(",") if part.strip()] if _is_sequence(hint) else raw
        try:
            values[field.name] = msgspec.convert(value, hint, strict=False)
        except msgspec.ValidationError as exc:
            reason = str(exc).split(" - at ", 1)[0]
            raise SettingsError(f"{name}={raw!r}: {reason}") from None
    return cls(**values)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``) and validate them."""
    environ = os.environ if environ is None else environ
    if not environ.get("AWS_REGION") and environ.get("AWS_DEFAULT_REGION"):
        environ = {**environ, "AWS_REGION": environ["AWS_DEFAULT_REGION"]}  # the AWS CLI's fallback
    settings = _load_struct(Settings, environ)
    if overrides:
        settings = msgspec.structs.replace(settings, **overrides)
    return settings.validate()


def iter_env_vars() -> Iterator[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, in declaration order."""

    def walk(cls: type[msgspec.Struct]) -> Iterator[tuple[str, str, str]]:
        hints = get_type_hints(cls, include_extras=True)
        for field in msgspec.structs.fields(cls):
            hint = hints[field.name]
            name = _env_name(hint)
            if name is None:
                yield from walk(hint)
                continue
            meta = next(m for m in hint.__metadata__ if isinstance(m, msgspec.Meta) and m.extra)
            default = field.default
            if isinstance(default, tuple):
                shown = ",".join(default)
            elif isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = str(default)
            yield name, shown, meta.description or ""

    yield from walk(Settings)


def markdown_table() -> str:
    """The table of docs/operations/configuration.md (``make docs``) and of ``chat-management config``."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, meaning in iter_env_vars():
        rows.append(f"| `{name}` | {f'`{default}`' if default else ''} | {meaning} |")
    return "\n".join(rows)
