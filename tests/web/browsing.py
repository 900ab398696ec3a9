"""What the browser tests share: `serve all` under uvicorn, a watch over what pages did, sign-in, drops."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from chat_core.settings import Settings
from chat_management import all as all_in_one
from tests import harness

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = harness.ROOT / ".artifacts" / "web"
# What the browser itself logs for refusals the test provokes on purpose: the 415 of an SVG upload and the
# socket's reconnect attempts while the server is down. Anything else in the console fails the test.
EXPECTED_CONSOLE = (
    re.compile(r"^Failed to load resource: the server responded with a status of (41[35]|429)"),
    re.compile(r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws\?access_token=[^']*' failed"),
)


class Server:
    """``serve all`` under a real uvicorn on a fixed port, so the test can stop and restart it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.service.base_url()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(
            all_in_one.create_app(self.settings),
            host="127.0.0.1",
            port=self.settings.service.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None


class Watch:
    """What the pages of a test did: console errors, uncaught exceptions, every URL they asked for."""

    def __init__(self, also_expected: Sequence[re.Pattern[str]] = ()) -> None:
        self.expected = (*EXPECTED_CONSOLE, *also_expected)  # what the test provokes on purpose
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.urls: list[str] = []
        self.failed: list[str] = []  # "who: status method url" of every answer >= 400, for the report

    def page(self, page: Any, who: str) -> None:
        def console(message: Any) -> None:
            if message.type == "error":
                self.console.append(f"{who}: {message.text}")

        page.on("console", console)
        page.on("pageerror", lambda e: self.exceptions.append(f"{who}: {e}"))
        page.on("websocket", lambda ws: self.urls.append(ws.url))

        def response(answer: Any) -> None:
            if answer.status >= 400:
                self.failed.append(f"{who}: {answer.status} {answer.request.method} {answer.url}")

        page.on("response", response)

    def check(self) -> None:
        assert self.exceptions == []
        unexpected = [
            line for line in self.console if not any(p.match(line.split(": ", 1)[1]) for p in self.expected)
        ]
        assert unexpected == [], self.failed
        assert self.urls, "no request was watched"
        for url in self.urls:
            parts = urlsplit(url)
            assert parts.scheme in ("blob", "data") or parts.hostname == "127.0.0.1", url


async def open_as(browser: Any, watch: Watch, url: str, who: str, *, phone: bool = False) -> Any:
    viewport = {"width": 390, "height": 780} if phone else {"width": 1100, "height": 720}
    context = await browser.new_context(viewport=viewport, service_workers="block")
    context.on("request", lambda request: watch.urls.append(request.url))
    page = await context.new_page()
    watch.page(page, who)
    await page.goto(url + "/")
    # keyboard only: type the user id and press Enter
    await page.get_by_label("User id").fill(who)
    await page.get_by_label("User id").press("Enter")
    await page.get_by_role("status", name="Connection: online").wait_for()
    return page


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


DROP = """([files]) => {
  const data = new DataTransfer();
  for (const [b64, name, type] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], name, { type }));
  }
  const target = document.querySelector(".conversation-pane");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(kind, { dataTransfer: data, bubbles: true, cancelable: true }));
  }
}"""


async def drop_files(page: Any, files: list[tuple[bytes, str, str]]) -> None:
    """Drops ``files`` ((bytes, name, content type) each) on the open conversation, as one drag would."""
    await page.evaluate(DROP, [[[base64.b64encode(d).decode(), n, t] for d, n, t in files]])


async def drop_file(page: Any, data: bytes, name: str, content_type: str) -> None:
    await drop_files(page, [(data, name, content_type)])


def thumbnail_shown(selector: str) -> str:
    """A predicate: the pipeline's thumbnail variant (320 px wide for the 640x480 photo) has loaded."""
    return (
        f'() => {{ const i = document.querySelector("{selector}"); '
        "return !!i && i.complete && i.naturalWidth === 320 && i.src.endsWith('?variant=thumbnail'); }"
    )
