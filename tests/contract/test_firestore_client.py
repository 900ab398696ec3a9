"""The Firestore adapter builds its client through public switches only, with the settings deciding."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from chat_core.chatstore import firestore
from chat_core.composition import Composition
from tests import harness
from tests.conftest import make_settings

ADAPTERS = Path(firestore.__file__).resolve().parents[2]  # chat_core: every adapter of every port


def _private_writes(path: Path) -> list[str]:
    """``obj._attr = ...`` where ``obj`` is not ``self``/``cls``: a write into another library's internals."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr.startswith("_")
                and not target.attr.startswith("__")
                and not (isinstance(target.value, ast.Name) and target.value.id in ("self", "cls"))
            ):
                found.append(f"{path.name}:{target.lineno} {ast.unparse(target)}")
    return found


# The one write into a library's internals that is not a client's: Litestar caches the OpenAPI document
# it serves there and has no public hook between building it and serving it (chat_core.openapi).
KNOWN = {"openapi.py app.plugins.get(OpenAPIPlugin)._openapi_schema"}


def test_no_adapter_writes_a_private_attribute_of_a_client() -> None:
    writes = [write for path in sorted(ADAPTERS.rglob("*.py")) for write in _private_writes(path)]
    assert [w for w in writes if f"{w.split(':')[0]} {w.split(' ', 1)[1]}" not in KNOWN] == []


@pytest.mark.firestore
async def test_the_settings_emulator_wins_over_the_environment(
    tmp_path: Path,
    firestore_emulator: harness.Backend,
    firestore_project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The process environment names another (dead) emulator: the settings' one is used, and the
    # environment is left as it was.
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    settings = make_settings(
        tmp_path,
        {
            "MESSAGE_STORE": "firestore",
            "FIRESTORE_PROJECT_ID": firestore_project,
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.address,
        },
    )
    backends = Composition(settings)
    store = backends.chat_store  # asked for before start-up, as a service does
    async with backends:
        await store.ping()
        assert await store.get_conversation("nobody-here") is None
    assert os.environ["FIRESTORE_EMULATOR_HOST"] == "127.0.0.1:9"
