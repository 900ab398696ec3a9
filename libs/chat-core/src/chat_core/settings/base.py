"""What every settings module declares with: the variable a field comes from, and the error."""

from __future__ import annotations

import msgspec


class SettingsError(ValueError):
    """A configuration problem; ``str()`` is one line naming the variable."""


def env(name: str, help: str) -> msgspec.Meta:
    return msgspec.Meta(description=help, extra={"env": name})


class Frozen(msgspec.Struct, frozen=True, kw_only=True):
    pass
