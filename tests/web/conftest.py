"""Fixtures of the browser tests: Debian's chromium under Playwright, and ``serve all`` on a free port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.conftest import make_settings
from tests.web.browsing import CHROMIUM, Server


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (`make test-deps` installs it)")
        pytest.skip("chromium is not installed (`make test-deps` installs it)")
    return CHROMIUM


@pytest.fixture
async def server_with(tmp_path: Path) -> AsyncIterator[Any]:
    """``await server_with({"MAX_IMAGE_BYTES": "1000"})`` -> a started ``Server`` with those settings."""
    started: list[Server] = []

    async def start(env: dict[str, str]) -> Server:
        port = harness.free_port()
        running = Server(make_settings(tmp_path, {"PORT": str(port), "DEV_LOGIN": "true", **env}))
        await running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def server(server_with: Any) -> Server:
    started: Server = await server_with({})
    return started


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        yield launched
        await launched.close()
