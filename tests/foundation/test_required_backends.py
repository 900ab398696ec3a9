"""``CHAT_REQUIRE_BACKENDS`` turns a missing backend from a skip into a failure (CI must never pass by
skipping the tests of the production adapters). Run in a separate pytest with a backend that cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = """
from tests import harness


def _missing():
    raise RuntimeError("no redis-server on this machine")


harness.FACTORIES["redis"] = _missing
from tests.conftest import *  # noqa: F403
"""
TESTS = """
def test_needs_redis(redis_backend):
    pass


def test_needs_a_private_redis(private_redis):
    pass
"""


@pytest.mark.parametrize(("required", "outcome"), [("redis", "errors"), ("localstack", "skipped")])
def test_a_missing_backend_fails_only_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: str, outcome: str
) -> None:
    monkeypatch.setenv("CHAT_REQUIRE_BACKENDS", required)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no redis-server for private_redis either
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_needs=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(**{outcome: 2})
