"""Albums in a real browser: several photos dropped at once, each uploaded with its own progress bar (and
retried), sent as one message; the other person's grid fills in image by image from BlurHash to thumbnail;
the viewer browses the conversation's images (the gallery endpoint, paged) with buttons, keys and a swipe.

On ``serve all`` under uvicorn with the real media pipeline (MEDIA_WORKERS=1), as ``test_browser.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import auth_header
from tests.web.browsing import Server, Watch, drop_files, open_as, shot, thumbnail_shown

pytestmark = pytest.mark.timeout(180)

COLOURS = [
    (220, 60, 50),
    (40, 140, 220),
    (60, 170, 90),
    (240, 190, 40),
    (150, 70, 200),
    (30, 30, 30),
    (250, 130, 180),
    (20, 180, 180),
    (120, 90, 40),
    (200, 200, 210),
    (90, 90, 160),
]


def photo(n: int) -> bytes:
    """A 640x480 JPEG of its own colours (so each BlurHash and thumbnail differ)."""
    image = Image.new("RGB", (640, 480), COLOURS[n % len(COLOURS)])
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 320, 640, 480), fill=(255 - COLOURS[n][0], 255 - COLOURS[n][1], 90))
    draw.ellipse((60 + 40 * n, 80, 220 + 40 * n, 240), fill=(250, 250, 250))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def files(count: int, prefix: str) -> list[tuple[bytes, str, str]]:
    return [(photo(n), f"{prefix}{n}.jpg", "image/jpeg") for n in range(count)]


class OneByOne:
    """bob's socket, ``message.updated`` held back and released one at a time; his read receipts' answers
    wait too (each is the message as stored when read, which could show an image ready before its event)."""

    def __init__(self) -> None:
        self.held: list[str | bytes] = []
        self.holding = True
        self.client: Any = None
        self.reads = asyncio.Event()

    def route(self, route: Any) -> None:
        server = route.connect_to_server()
        self.client = route

        def from_server(message: str | bytes) -> None:
            if self.holding and '"message.updated"' in str(message):
                self.held.append(message)
            else:
                route.send(message)

        server.on_message(from_server)

    async def read_receipt(self, route: Any) -> None:
        await self.reads.wait()
        await route.continue_()

    async def wait_for(self, count: int) -> None:
        for _ in range(600):
            if len(self.held) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.held)} of {count} message.updated in 30 s")

    def release_one(self) -> dict[str, Any]:
        message = self.held.pop(0)
        self.client.send(message)
        event: dict[str, Any] = json.loads(message)
        return event

    def release_all(self) -> None:
        self.holding = False
        self.reads.set()
        for message in self.held:
            self.client.send(message)
        self.held.clear()


class Gate:
    """Requests held until ``open()``: the thumbnails, so the BlurHash stage is certain to be seen."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.waiting = 0

    async def route(self, route: Any) -> None:
        self.waiting += 1
        await self.opened.wait()
        await route.continue_()


def small_gallery_pages(route: Any) -> Any:
    """The gallery asked for two items a page, so browsing back pages with ``nextCursor``."""
    parts = urlsplit(route.request.url)
    query = dict(parse_qsl(parts.query))
    query["limit"] = "2"
    return route.continue_(url=parts._replace(query=urlencode(query)).geturl())


UPLOADED = """(count) =>
  [...document.querySelectorAll(".attachments progress")].filter((bar) => bar.value === 1).length === count"""

BLURHASH_COLOURS = """(tile) => {
  const canvas = tile.querySelector("canvas.blurhash");
  if (!canvas) return 0;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < pixels.length; i += 4) colours.add(`${pixels[i]},${pixels[i + 1]},${pixels[i + 2]}`);
  return colours.size;
}"""


async def share_one_photo(server: Server, conversation_id: str, caption: str) -> None:
    """alice sends a single photo through the API (upload URL, PUT, send): the album's older neighbour."""
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        ticket = (
            await api.post(
                f"/conversations/{conversation_id}/images/upload_url", json={"content_type": "image/jpeg"}
            )
        ).json()
        put = await api.put(ticket["upload_url"], content=photo(10), headers={"Content-Type": "image/jpeg"})
        assert put.status_code == 200, put.text
        sent = await api.post(
            f"/conversations/{conversation_id}/messages",
            json={
                "messageType": "image",
                "content": caption,
                "metadata": {"object_key": ticket["object_key"], "content_type": "image/jpeg"},
            },
        )
        assert sent.status_code == 201, sent.text
        for _ in range(300):  # ready before bob signs in: its message.updated is not one the test holds
            [message] = (await api.get(f"/conversations/{conversation_id}/messages")).json()["items"]
            if message["metadata"]["status"] == "ready":
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the single photo was not processed in 30 s")


async def test_a_three_photo_album_fills_in_and_the_viewer_browses_the_conversation(
    browser: Any, server: Server
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        created = await api.post("/conversations", json={"participantIds": ["bob"], "name": "Weekend"})
        conversation_id = created.json()["conversationId"]
    await share_one_photo(server, conversation_id, "The day before")
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    context = await browser.new_context(viewport={"width": 1100, "height": 720}, service_workers="block")
    context.on("request", lambda request: watch.urls.append(request.url))
    bob = await context.new_page()
    watch.page(bob, "bob")
    updates, thumbnails = OneByOne(), Gate()
    await bob.route_web_socket(re.compile(r"/ws\?"), updates.route)
    await bob.route(re.compile(r"/messages/[^/]+/read$"), updates.read_receipt)
    await bob.route(re.compile(r"\?variant=thumbnail$"), thumbnails.route)
    await bob.route(re.compile(r"/images\?limit="), small_gallery_pages)
    await bob.goto(server.url + "/")
    await bob.get_by_label("User id").fill("bob")
    await bob.get_by_label("User id").press("Enter")
    await bob.get_by_role("status", name="Connection: online").wait_for()
    await bob.locator("button.conversation", has_text="Weekend").click()
    await alice.locator("button.conversation", has_text="Weekend").click()

    # alice picks three photos at once: three uploads side by side, each with its own progress bar
    await alice.get_by_label("Photos", exact=True).set_input_files(
        [{"name": name, "mimeType": kind, "buffer": data} for data, name, kind in files(3, "lake")]
    )
    bars = alice.get_by_label(re.compile(r"^Upload progress of lake\d\.jpg$"))
    await alice.wait_for_function(
        "() => { const p = [...document.querySelectorAll('.attachments progress')];"
        " return p.length === 3 && p.every((b) => b.value === 1); }"
    )
    assert await bars.count() == 3
    await alice.get_by_label("Description of lake1.jpg").fill("A heron on the jetty")
    await shot(alice, "30-album-three-uploaded")
    async with alice.expect_request(lambda r: r.method == "POST" and r.url.endswith("/messages")) as sent:
        await alice.get_by_label("Caption").fill("Lake weekend")
        await alice.get_by_label("Caption").press("Enter")
    images = json.loads((await sent.value).post_data or "{}")["metadata"]["images"]
    assert [i.get("alt_text") for i in images] == [None, "A heron on the jetty", None]
    await bars.first.wait_for(state="detached")

    # bob: a grid of three (the 3-layout), every tile processing until its own message.updated
    album = bob.get_by_role("group", name="Album of 3 photos: Lake weekend")
    await album.wait_for()
    assert await album.get_attribute("class") == "album album-3"
    tiles = album.locator(".photo")
    assert await tiles.count() == 3
    await updates.wait_for(3)
    assert await album.locator(".photo[data-status='processing']").count() == 3
    await shot(bob, "31-album-processing")

    # one image's event: that tile (its index) shows its BlurHash, the others still wait
    first = updates.release_one()
    index = first["index"]
    assert [image["status"] == "ready" for image in first["message"]["metadata"]["images"]] == [
        n == index for n in range(3)
    ]
    ready = album.locator(f".photo[data-index='{index}']")
    await album.locator(f".photo[data-index='{index}'][data-status='ready']").wait_for()
    assert await ready.evaluate(BLURHASH_COLOURS) > 20
    assert await album.locator(".photo[data-status='processing']").count() == 2
    assert await ready.locator("img.loaded").count() == 0  # the thumbnail is still on its way
    await shot(bob, "32-album-one-blurhash")

    # the rest: every tile its BlurHash, then every thumbnail once they may load
    updates.release_all()
    await bob.wait_for_function(
        "() => document.querySelectorAll('.album .photo[data-status=ready]').length === 3"
    )
    for index in range(3):
        assert await tiles.nth(index).evaluate(BLURHASH_COLOURS) > 20
    thumbnails.opened.set()
    for index in range(3):
        await bob.wait_for_function(thumbnail_shown(f".album .photo[data-index='{index}'] img"))
    assert await album.get_by_text("Processing…").count() == 0
    await shot(bob, "33-album-thumbnails")
    await shot(alice, "33-alice-album")

    # the viewer on the second photo: its preview, its alt text, 3 of 4 (the single photo came before)
    await tiles.nth(1).click()
    viewer = bob.get_by_role("dialog", name="Photo")
    await viewer.wait_for()
    position = viewer.locator(".position")
    await position.get_by_text("3 of 4", exact=True).wait_for()
    await viewer.get_by_text("A heron on the jetty").wait_for()
    image = viewer.locator("img")
    assert (await image.get_attribute("src") or "").endswith("?variant=preview")
    await bob.wait_for_function("() => document.querySelector('dialog.viewer img')?.naturalWidth > 320")
    original = await viewer.get_by_role("link", name="Open original").get_attribute("href")
    assert original == images[1]["url"] or re.fullmatch(rf"{server.url}/images/.+\.jpg", original or "")
    await shot(bob, "34-viewer")

    # next and previous, with the buttons and the keys; back past the album to the single photo before it
    await viewer.get_by_role("button", name="Next photo").click()
    await position.get_by_text("4 of 4", exact=True).wait_for()
    assert await viewer.get_by_role("button", name="Next photo").is_disabled()
    await bob.keyboard.press("ArrowLeft")
    await bob.keyboard.press("ArrowLeft")
    await position.get_by_text("2 of 4", exact=True).wait_for()
    await bob.keyboard.press("ArrowLeft")  # from the gallery's second page (two a page): the day before
    await position.get_by_text("1 of 4", exact=True).wait_for()
    await viewer.get_by_text("The day before").wait_for()
    await viewer.locator("button[aria-label='Previous photo'][disabled]").wait_for()  # the gallery's end
    await bob.keyboard.press("ArrowRight")
    await position.get_by_text("2 of 4", exact=True).wait_for()

    # a swipe (a drag across the photo) goes on; zoom with the keys, a double-click and the wheel
    stage = viewer.locator(".viewer-stage")
    box = await stage.bounding_box()
    assert box is not None
    middle_x, middle_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    await bob.mouse.move(middle_x + 150, middle_y)
    await bob.mouse.down()
    await bob.mouse.move(middle_x - 150, middle_y, steps=5)
    await bob.mouse.up()
    await position.get_by_text("3 of 4", exact=True).wait_for()
    frame = viewer.locator(".viewer-frame")
    await bob.keyboard.press("+")
    assert await frame.get_attribute("data-scale") == "1.50"
    await bob.keyboard.press("-")
    assert await frame.get_attribute("data-scale") == "1.00"
    await stage.dblclick()
    assert await frame.get_attribute("data-scale") == "2.50"
    # zoomed, a drag pans instead of swiping
    await bob.mouse.move(middle_x, middle_y)
    await bob.mouse.down()
    await bob.mouse.move(middle_x - 120, middle_y, steps=4)
    await bob.mouse.up()
    await position.get_by_text("3 of 4", exact=True).wait_for()
    assert "translate(0px" not in (await frame.evaluate("f => f.style.transform"))
    await shot(bob, "35-viewer-zoomed")
    await stage.dblclick()
    assert await frame.get_attribute("data-scale") == "1.00"
    await bob.mouse.wheel(0, -300)
    await bob.wait_for_function("() => Number(document.querySelector('.viewer-frame').dataset.scale) > 1")
    await viewer.get_by_role("button", name="Zoom out").click()

    # focus stays in the viewer (Tab wraps around), every control is named, Esc closes
    close = viewer.get_by_role("button", name="Close")
    await close.focus()
    await bob.keyboard.press("Tab")
    assert await bob.evaluate("() => document.activeElement.closest('dialog.viewer') !== null")
    for name in ("Previous photo", "Next photo", "Zoom in", "Close"):
        assert await viewer.get_by_role("button", name=name).count() == 1
    await bob.keyboard.press("Escape")
    await viewer.wait_for(state="hidden")

    # alice describes the third photo afterwards (an edit names its index): bob's tile says so at once
    mine = alice.locator("li.message.mine", has=alice.get_by_role("group", name=re.compile("^Album of 3")))
    await mine.get_by_role("button", name="Edit").click()
    await alice.get_by_label("Edit description of photo 3").fill("Evening light")
    await alice.get_by_role("button", name="Save").click()
    await album.get_by_role("button", name="Open Photo 3 of 3: Evening light").wait_for()
    assert await album.get_by_role("button", name="Open Photo 2 of 3: A heron on the jetty").count() == 1
    watch.check()


async def test_a_ten_photo_album_from_the_browser_fills_in_for_the_other_member(
    browser: Any, server: Server
) -> None:
    """The issue's "done when": ten photos picked at once (an eleventh is left out, saying so), one upload
    failing and retried, one send; bob's grid (four tiles, "+6") fills in from BlurHash to thumbnails."""
    watch = Watch(also_expected=[re.compile(r"^Failed to load resource: net::ERR_CONNECTION_RESET")])
    alice = await open_as(browser, watch, server.url, "alice")
    bob = await open_as(browser, watch, server.url, "bob", phone=True)
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        created = await api.post("/conversations", json={"participantIds": ["bob"], "name": "Ten"})
        conversation_id = created.json()["conversationId"]
    await bob.locator("button.conversation", has_text="Ten").click()
    await alice.locator("button.conversation", has_text="Ten").click()

    # the first PUT to the storage fails on the way (a network error): that photo offers Retry
    failed_once: list[str] = []

    async def flaky_storage(route: Any) -> None:
        if route.request.method == "PUT" and not failed_once:
            failed_once.append(route.request.url)
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await alice.route(re.compile(r"/_storage/"), flaky_storage)
    await drop_files(alice, files(11, "trip"))
    alert = alice.get_by_role("alert").filter(has_text="left out")
    await alert.wait_for()
    assert "at most 10 photos" in await alert.inner_text()
    assert "trip10.jpg" in await alert.inner_text()
    assert await alice.locator(".attachments li").count() == 10
    retry = alice.get_by_role("button", name=re.compile(r"^Retry trip\d\.jpg$"))
    await retry.wait_for()
    await alice.wait_for_function(UPLOADED, arg=9)
    await alice.get_by_label("Caption").press("Enter")  # not yet: one photo has not uploaded
    await alice.get_by_role("alert").filter(has_text="retry or remove").wait_for()
    await shot(alice, "36-ten-one-failed")
    await retry.click()
    await alice.wait_for_function(UPLOADED, arg=10)
    await alice.get_by_label("Caption").fill("Ten from the trip")
    started = asyncio.get_running_loop().time()
    await alice.get_by_label("Caption").press("Enter")
    await alice.locator(".attachments").wait_for(state="detached")

    # bob: the 4+ layout, the fourth tile says +6, and all four fill in to thumbnails
    album = bob.get_by_role("group", name="Album of 10 photos: Ten from the trip")
    await album.wait_for()
    assert await album.get_attribute("class") == "album album-4"
    assert await album.locator(".photo").count() == 4
    assert await album.locator(".photo[data-index='3'] .more").inner_text() == "+6"
    for index in range(4):
        await bob.wait_for_function(
            thumbnail_shown(f".album .photo[data-index='{index}'] img"), timeout=60_000
        )
    await shot(bob, "37-ten-album-phone")
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("bob")) as api:
        for _ in range(200):
            [message] = (await api.get(f"/conversations/{conversation_id}/messages")).json()["items"]
            statuses = [image["status"] for image in message["metadata"]["images"]]
            if all(status == "ready" for status in statuses):
                break
            await asyncio.sleep(0.1)
    assert statuses == ["ready"] * 10
    # a figure for the report, not a promise: the shared test machine's load decides it
    print(f"ten-photo album: Enter -> all ten ready {asyncio.get_running_loop().time() - started:.1f} s")

    # "+6" opens the viewer on the fourth photo, and it browses on to the tenth
    await album.get_by_role("button", name="Open Photo 4 of 10 (6 more)").click()
    viewer = bob.get_by_role("dialog", name="Photo")
    position = viewer.locator(".position")
    await position.get_by_text("4 of 10", exact=True).wait_for()
    for _ in range(6):
        await bob.keyboard.press("ArrowRight")
    await position.get_by_text("10 of 10", exact=True).wait_for()
    await bob.keyboard.press("Escape")
    await viewer.wait_for(state="hidden")
    watch.check()
