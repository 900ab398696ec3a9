"""The web client in a real browser (Playwright driving Debian's chromium) on ``serve all`` under uvicorn.

Two browser contexts are two people: alice at desktop width, bob at phone width. Screenshots of each step
go to ``.artifacts/web/`` (gitignored); the first-load figures to ``.artifacts/web/first-load.json``.
The media pipeline is the real one (``serve all`` runs the media processor in-process, MEDIA_WORKERS=1).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from PIL import ExifTags, Image, ImageDraw

from chat_devstack import Stack
from tests import harness
from tests.conftest import auth_header, unique
from tests.web.browsing import (
    ARTIFACTS,
    Server,
    Watch,
    drop_file,
    open_as,
    shot,
    thumbnail_shown,
)

pytestmark = pytest.mark.timeout(180)


def side_by_side(names: list[str], name: str) -> None:
    """One picture of both windows (docs/img/web-client.png, on docs/getting-started.md)."""
    images = [Image.open(ARTIFACTS / f"{n}.png").convert("RGB") for n in names]
    gap = 16
    canvas = Image.new(
        "RGB",
        (sum(i.width for i in images) + gap * (len(images) + 1), max(i.height for i in images) + 2 * gap),
        (205, 210, 218),
    )
    x = gap
    for image in images:
        canvas.paste(image, (x, gap))
        x += image.width + gap
    canvas.save(ARTIFACTS / f"{name}.png", optimize=True)


def photo_with_gps() -> bytes:
    """A 640x480 JPEG whose EXIF says where it was taken (what the pipeline must strip)."""
    image = Image.new("RGB", (640, 480), (250, 170, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 300, 640, 480), fill=(40, 90, 160))
    draw.ellipse((380, 120, 520, 260), fill=(255, 230, 120))
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 36.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=85)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo), "the photo has no GPS"
    return data


FIRST_LOAD = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const all = [nav, ...performance.getEntriesByType("resource")];
  const sum = (key) => all.reduce((total, entry) => total + (entry[key] || 0), 0);
  return {
    requests: all.length,
    transferBytes: sum("transferSize"),
    encodedBodyBytes: sum("encodedBodySize"),
    decodedBodyBytes: sum("decodedBodySize"),
    domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd),
    loadMs: Math.round(nav.loadEventEnd),
  };
}"""


async def test_two_people_chat_with_a_photo_in_the_browser(browser: Any, server: Server) -> None:
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")

    # bob's first load, cold cache: how big and how fast the page is
    context = await browser.new_context(viewport={"width": 390, "height": 780}, service_workers="block")
    context.on("request", lambda request: watch.urls.append(request.url))
    bob = await context.new_page()
    watch.page(bob, "bob")
    await bob.goto(server.url + "/", wait_until="load")
    first_load = await bob.evaluate(FIRST_LOAD)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "first-load.json").write_text(json.dumps(first_load, indent=2))
    print("first load:", first_load)
    assert first_load["encodedBodyBytes"] < 40_000  # everything the first load fetches, gzipped
    await shot(bob, "01-sign-in-phone")
    await bob.get_by_label("User id").fill("bob")
    await bob.get_by_label("User id").press("Enter")
    await bob.get_by_role("status", name="Connection: online").wait_for()

    # alice starts a conversation with bob; it appears in bob's list at once (conversation.joined)
    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Participants").fill("bob")
    await alice.get_by_label("Name (optional)").fill("Lake trip")
    await alice.get_by_role("button", name="Create").click()
    await alice.get_by_role("heading", name="Lake trip").wait_for()
    bobs_entry = bob.locator("button.conversation", has_text="Lake trip")
    await bobs_entry.wait_for()

    # a text, then a photo with GPS EXIF dropped onto the conversation, with a caption
    await alice.get_by_label("Message", exact=True).fill("Here is the photo from Saturday")
    await alice.get_by_label("Message", exact=True).press("Enter")
    await bobs_entry.get_by_label("1 unread").wait_for()
    await drop_file(alice, photo_with_gps(), "lake.jpg", "image/jpeg")
    progress = alice.get_by_label("Upload progress")
    await progress.wait_for()
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await shot(alice, "02-photo-uploaded")
    await alice.get_by_label("Caption").fill("Sunset at the lake")
    await alice.get_by_label("Caption").press("Enter")
    await progress.wait_for(state="detached")
    photo = "img[alt='Photo: Sunset at the lake']"
    loaded = thumbnail_shown(photo)
    await alice.wait_for_function(loaded)

    # bob sees both live: his list says 2 unread and shows the caption; he opens the conversation
    await bobs_entry.get_by_label("2 unread").wait_for()
    assert "Sunset at the lake" in await bobs_entry.inner_text()
    await shot(bob, "03-bob-list-unread")
    await bobs_entry.click()
    await bob.locator("li.message p.text", has_text="Here is the photo from Saturday").wait_for()
    await bob.wait_for_function(loaded)
    await shot(bob, "04-bob-conversation")

    # the messages are on bob's screen, so they are read: alice sees bob's receipts live
    receipts = alice.locator(".receipt", has_text="Read by bob")
    await receipts.nth(1).wait_for()
    assert await receipts.count() == 2
    await shot(alice, "05-alice-read-by-bob")
    await shot(bob, "05-bob-reading")
    side_by_side(["05-alice-read-by-bob", "05-bob-reading"], "readme")

    # bob opens the viewer; Escape closes it (keyboard)
    await bob.get_by_role("button", name="Open Photo: Sunset at the lake").click()
    viewer = bob.get_by_role("dialog", name="Photo")
    await viewer.wait_for()
    await bob.wait_for_function(
        "() => { const i = document.querySelector('dialog.viewer img'); return i && i.naturalWidth === 640; }"
    )
    original = await viewer.get_by_role("link", name="Open original").get_attribute("href")
    assert original is not None
    assert re.fullmatch(rf"{server.url}/images/[^/]+/images/alice/[^/]+\.jpg", original)
    await shot(bob, "06-bob-viewer")
    await bob.keyboard.press("Escape")
    await viewer.wait_for(state="hidden")

    # a refusal is a message, not silence: an SVG is 415 unsupported_image_type, in the server's words
    await drop_file(alice, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "drawing.svg", "image/svg+xml")
    alert = alice.get_by_role("alert")
    await alert.wait_for()
    text = await alert.inner_text()
    assert "drawing.svg" in text
    assert "unsupported_image_type" in text
    assert "415" in text
    await shot(alice, "07-alice-415")

    # the server restarts; bob's socket stays away until alice has sent a message, then he backfills it
    blocked = True

    async def bobs_socket(route: Any) -> None:
        if blocked:
            await route.close(code=1013, reason="test: not yet")
        else:
            route.connect_to_server()

    await bob.route_web_socket(re.compile(r"/ws\?"), bobs_socket)
    await server.stop()
    await bob.get_by_role("status", name="Connection: online").wait_for(state="detached")
    await server.start()
    await alice.get_by_role("status", name="Connection: online").wait_for(timeout=20_000)
    await alice.get_by_label("Message", exact=True).fill("Sent while bob was away")
    await alice.get_by_label("Message", exact=True).press("Enter")
    away = "li.message p.text >> text='Sent while bob was away'"
    await alice.locator(away).wait_for()
    # more than one page (30) of messages is missed: the backfill pages back to what bob already has
    conversation_id = unquote(urlsplit(alice.url).fragment)
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        for n in range(35):
            sent = await api.post(
                f"/conversations/{conversation_id}/messages",
                json={"messageType": "text", "content": f"missed {n}"},
            )
            assert sent.status_code == 201
    await asyncio.sleep(1)
    assert await bob.locator(away).count() == 0  # no live event reached him
    blocked = False
    await bob.locator(away).wait_for(timeout=20_000)
    missed = await bob.locator("li.message p.text", has_text="missed").all_inner_texts()
    assert sorted(missed) == sorted(f"missed {n}" for n in range(35))
    await bob.get_by_role("status", name="Connection: online").wait_for()
    await receipts.nth(2).wait_for()  # and it was on his screen, so alice sees it read
    await shot(bob, "08-bob-backfilled")
    await shot(alice, "09-alice-after-restart")

    # phone width: nothing wider than the screen
    assert await bob.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    watch.check()


async def test_a_receipt_missed_during_a_redis_outage_shows_after_the_servers_resync(
    browser: Any, server_with: Any, private_redis: harness.Backend
) -> None:
    server = await server_with({"EVENT_BUS": "redis", "REDIS_URL": private_redis.address})
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        created = await api.post("/conversations", json={"participantIds": ["bob"], "name": "Outage"})
        assert created.status_code == 201
    conversation_id = created.json()["conversationId"]
    await alice.locator("button.conversation", has_text="Outage").click()
    await alice.get_by_label("Message", exact=True).fill("did you get this?")
    await alice.get_by_label("Message", exact=True).press("Enter")
    receipt = alice.locator("li.message", has_text="did you get this?").locator(".receipt")
    await receipt.get_by_text("Sent", exact=True).wait_for()

    # bob reads it while Redis is down: the message.read event is lost, alice's socket stays open
    await asyncio.to_thread(private_redis.stop)
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("bob")) as api:
        listed = await api.get(f"/conversations/{conversation_id}/messages")
        message_id = listed.json()["items"][0]["messageId"]
        read = await api.post(f"/conversations/{conversation_id}/messages/{message_id}/read")
        assert read.status_code == 200
    await asyncio.to_thread(private_redis.start)

    # once the subscription is back the server sends session.resync and the page refetches the thread
    await receipt.get_by_text("Read by bob").wait_for(timeout=30_000)
    assert await alice.get_by_role("status", name="Connection: online").count() == 1
    watch.check()


async def test_older_messages_load_as_you_scroll_up(browser: Any, server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        created = await api.post("/conversations", json={"participantIds": ["bob"], "name": "History"})
        conversation_id = created.json()["conversationId"]
        for n in range(75):
            sent = await api.post(
                f"/conversations/{conversation_id}/messages",
                json={"messageType": "text", "content": f"message number {n}"},
            )
            assert sent.status_code == 201
    watch = Watch()
    bob = await open_as(browser, watch, server.url, "bob")
    await bob.locator("button.conversation", has_text="History").click()
    texts = bob.locator("li.message p.text")
    await texts.get_by_text("message number 74", exact=True).wait_for()
    messages = bob.locator("li.message")
    assert await messages.count() == 30  # one page
    for _ in range(10):
        if await bob.get_by_text("Start of the conversation").count():
            break
        await messages.last.scroll_into_view_if_needed()  # the oldest loaded message
        await asyncio.sleep(0.3)
    await bob.get_by_text("Start of the conversation").wait_for()
    shown = await texts.all_inner_texts()
    assert sorted(shown) == sorted(f"message number {n}" for n in range(75))  # each once, none missing
    await texts.get_by_text("message number 0", exact=True).wait_for()
    await shot(bob, "10-bob-history-top")
    watch.check()


BLURHASH_COLOURS = """() => {
  const canvas = document.querySelector(".photo canvas.blurhash");
  if (!canvas) return 0;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < pixels.length; i += 4) colours.add(`${pixels[i]},${pixels[i + 1]},${pixels[i + 2]}`);
  return colours.size;
}"""


class HeldUpdates:
    """bob's socket, with ``message.updated`` held back while ``holding`` (Playwright's WebSocket routing);
    his read receipts wait too, as their answer is the message as stored now (possibly ready already)."""

    def __init__(self) -> None:
        self.holding = True
        self.held: list[str | bytes] = []
        self.client: Any = None
        self.released = asyncio.Event()

    async def read_receipt(self, route: Any) -> None:
        await self.released.wait()
        await route.continue_()

    def route(self, route: Any) -> None:
        server = route.connect_to_server()
        self.client = route

        def from_server(message: str | bytes) -> None:
            if self.holding and '"message.updated"' in str(message):
                self.held.append(message)
            else:
                route.send(message)

        server.on_message(from_server)

    def release(self) -> None:
        self.holding = False
        self.released.set()
        for message in self.held:
            self.client.send(message)
        self.held.clear()


async def test_the_real_pipeline_placeholder_then_thumbnail_then_preview_without_gps(
    browser: Any, server: Server
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        created = await api.post("/conversations", json={"participantIds": ["bob"], "name": "Pipeline"})
        conversation_id = created.json()["conversationId"]
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    context = await browser.new_context(viewport={"width": 1100, "height": 720}, service_workers="block")
    context.on("request", lambda request: watch.urls.append(request.url))
    bob = await context.new_page()
    watch.page(bob, "bob")
    updates = HeldUpdates()
    await bob.route_web_socket(re.compile(r"/ws\?"), updates.route)
    await bob.route(re.compile(r"/messages/[^/]+/read$"), updates.read_receipt)
    await bob.goto(server.url + "/")
    await bob.get_by_label("User id").fill("bob")
    await bob.get_by_label("User id").press("Enter")
    await bob.get_by_role("status", name="Connection: online").wait_for()
    await bob.locator("button.conversation", has_text="Pipeline").click()
    await alice.locator("button.conversation", has_text="Pipeline").click()

    # alice drops the photo with GPS EXIF and sends it with a caption
    await drop_file(alice, photo_with_gps(), "lake.jpg", "image/jpeg")
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await alice.get_by_label("Caption").fill("Sunset at the lake")
    await alice.get_by_label("Caption").press("Enter")

    # bob: the message as sent (status processing): a placeholder and a badge, no <img>; the pipeline's
    # message.updated has arrived at his socket and is held back, so this stage is certain to be seen
    photo = bob.locator(".photo")
    await bob.locator(".photo[data-status='processing']").wait_for()
    for _ in range(300):
        if updates.held:
            break
        await asyncio.sleep(0.1)
    assert updates.held, "the pipeline announced nothing in 30 s"
    assert await photo.locator("img").count() == 0
    assert await photo.locator(".placeholder").count() == 1
    await photo.get_by_text("Processing…").wait_for()
    await shot(bob, "11-pipeline-processing")

    # message.updated (ready): the BlurHash (real pixels), then the thumbnail variant; the badge is gone
    updates.release()
    await bob.locator(".photo[data-status='ready'] img.loaded").wait_for()
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("bob")) as api:
        listed = await api.get(f"/conversations/{conversation_id}/messages")
    metadata = listed.json()["items"][0]["metadata"]
    assert metadata["status"] == "ready"
    thumbnail, preview = metadata["variants"]["thumbnail"], metadata["variants"]["preview"]
    assert thumbnail["width"] < 640  # a real thumbnail, not the original
    image = photo.locator("img")
    assert await image.get_attribute("src") == thumbnail["url"]
    assert await image.evaluate("i => i.naturalWidth") == thumbnail["width"]
    assert await bob.evaluate(BLURHASH_COLOURS) > 20  # drawn from the pipeline's hash
    assert await photo.get_by_text("Processing…").count() == 0
    await shot(bob, "12-pipeline-thumbnail")
    await shot(alice, "12-alice-pipeline-thumbnail")
    side_by_side(["12-alice-pipeline-thumbnail", "12-pipeline-thumbnail"], "pipeline-side-by-side")

    # the viewer: the preview variant; "Open original" is metadata.url, whose bytes carry no GPS EXIF
    await photo.click()
    viewer = bob.get_by_role("dialog", name="Photo")
    await viewer.wait_for()
    assert await viewer.locator("img").get_attribute("src") == preview["url"]
    await bob.wait_for_function(
        f"() => document.querySelector('dialog.viewer img')?.naturalWidth === {preview['width']}"
    )
    original = await viewer.get_by_role("link", name="Open original").get_attribute("href")
    assert original == metadata["url"]
    fetched = await context.request.get(original)  # the context's cookie jar: the page's /images cookie
    assert fetched.status == 200
    served = Image.open(io.BytesIO(await fetched.body()))
    assert served.size == (640, 480)
    exif = served.getexif()
    assert ExifTags.Base.GPSInfo not in exif
    assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert "exif" not in served.info
    await shot(bob, "13-pipeline-preview")
    await bob.keyboard.press("Escape")
    await viewer.wait_for(state="hidden")

    # a failed job (a truncated JPEG): the reason, and no broken image
    broken = photo_with_gps()
    await drop_file(alice, broken[: len(broken) // 2], "cut.jpg", "image/jpeg")
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await alice.get_by_label("Caption").fill("Cut short")
    await alice.get_by_label("Caption").press("Enter")
    failed = bob.locator(".photo[data-status='failed']")
    await failed.get_by_text("Could not be processed: truncated").wait_for(timeout=30_000)
    assert await failed.locator("img").count() == 0
    assert await failed.get_by_text("Image unavailable").count() == 0
    await shot(bob, "14-pipeline-failed")
    watch.check()


async def test_a_429_is_shown_with_its_retry_hint(browser: Any, server_with: Any) -> None:
    server = await server_with({"RATE_LIMIT_SENDS": "2/minute"})
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Participants").fill("bob")
    await alice.get_by_role("button", name="Create").click()
    await alice.get_by_role("heading", name="bob").wait_for()
    message = alice.get_by_label("Message", exact=True)
    for n in range(2):
        await message.fill(f"within the limit {n}")
        await message.press("Enter")
        await alice.locator("li.message p.text", has_text=f"within the limit {n}").wait_for()
    await message.fill("one too many")
    async with alice.expect_response(lambda r: r.status == 429) as refused:
        await message.press("Enter")
    retry_after = int((await refused.value).headers["retry-after"])
    assert 1 <= retry_after <= 60
    alert = alice.get_by_role("alert")
    await alert.wait_for()
    text = await alert.inner_text()
    assert "rate_limited" in text
    assert "429" in text
    # the retry hint, once: the server's "retry in N s" or the page's "Try again in N s." from Retry-After
    assert len(re.findall(rf"(?i)\b(?:retry|try again) in {retry_after} s\b", text)) == 1, text
    assert await message.input_value() == "one too many"  # kept, to send again later
    assert await alice.locator("li.message p.text", has_text="one too many").count() == 0
    await shot(alice, "15-alice-429")
    watch.check()


async def test_a_photo_over_the_size_limit_is_refused_with_the_servers_words(
    browser: Any, server_with: Any
) -> None:
    server = await server_with({"MAX_IMAGE_BYTES": "4000"})
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Participants").fill("bob")
    await alice.get_by_role("button", name="Create").click()
    await alice.get_by_role("heading", name="bob").wait_for()
    photo = photo_with_gps()
    assert len(photo) > 4000
    await drop_file(alice, photo, "big.jpg", "image/jpeg")
    alert = alice.get_by_role("alert")
    await alert.wait_for()
    text = await alert.inner_text()
    assert "big.jpg" in text
    assert "image_too_large" in text
    assert "413" in text
    assert await alice.get_by_label("Upload progress").count() == 0
    await shot(alice, "13-alice-413")
    watch.check()


# --- make dev: the page through the gateway, in front of each service as its own process ---------------
@pytest.fixture
async def dev_stack(
    redis_backend: harness.Backend,
    localstack: harness.Backend,
    firestore_emulator: harness.Backend,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    """What ``make dev`` runs (cloud adapters on real backends, the gateway, DEV_LOGIN on the page)."""
    stack = Stack(
        redis_url=redis_backend.address,
        aws_endpoint_url=localstack.address,
        firestore_host=firestore_emulator.address,
        workdir=tmp_path / "dev",
        suffix=unique("webdev"),
        gateway=True,
        extra_env={"SHUTDOWN_DRAIN_SECONDS": "1"},
    )
    await asyncio.to_thread(stack.start)
    yield stack
    await asyncio.to_thread(stack.stop)


def own_people(stack: Stack) -> tuple[str, str]:
    """alice's and bob's user ids in ``stack``, of its own. Parallel workers' stacks share one Redis, and
    the per-user channel (``user:<id>``, where ``conversation.joined`` goes) is the same name in every
    stack: a plain "bob" would hear another worker's conversations and ask this stack for them (404)."""
    return f"alice-{stack.suffix}", f"bob-{stack.suffix}"


async def test_make_devs_one_url_serves_the_page_and_two_people_chat_through_it(
    browser: Any, dev_stack: Stack
) -> None:
    watch = Watch()
    url = dev_stack.public_url  # what `make dev` prints
    alice_id, bob_id = own_people(dev_stack)
    alice = await open_as(browser, watch, url, alice_id)
    bob = await open_as(browser, watch, url, bob_id, phone=True)

    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Participants").fill(bob_id)
    await alice.get_by_label("Name (optional)").fill("Dev stack")
    await alice.get_by_role("button", name="Create").click()
    await alice.get_by_role("heading", name="Dev stack").wait_for()
    bobs_entry = bob.locator("button.conversation", has_text="Dev stack")
    await bobs_entry.wait_for()  # conversation.joined, over the socket through the gateway

    await alice.get_by_label("Message", exact=True).fill("hello through the gateway")
    await alice.get_by_label("Message", exact=True).press("Enter")
    await bobs_entry.get_by_label("1 unread").wait_for()
    await bobs_entry.click()
    await bob.locator("li.message p.text", has_text="hello through the gateway").wait_for()

    # a photo: upload URL (the upload process), the direct PUT to LocalStack, the send (message), and
    # the <img> through the image proxy with the page's cookie, its redirect to a signed GET
    await drop_file(alice, photo_with_gps(), "dev.jpg", "image/jpeg")
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await alice.get_by_label("Caption").fill("Seen through the gateway")
    await alice.get_by_label("Caption").press("Enter")
    photo = "img[alt='Photo: Seen through the gateway']"
    loaded = thumbnail_shown(photo)
    try:
        await bob.wait_for_function(loaded, timeout=20_000)
    except Exception as exc:
        raise AssertionError(f"no thumbnail for bob; answers >= 400: {watch.failed}") from exc
    await shot(bob, "20-make-dev-gateway-phone")
    watch.check()
    # every page and API call went to the one origin (or the bucket, for the PUT and the signed GET)
    gateway_or_bucket = {urlsplit(url).netloc, urlsplit(dev_stack.aws_endpoint_url).netloc}
    assert {urlsplit(u).netloc for u in watch.urls if u.startswith(("http", "ws"))} <= gateway_or_bucket


class LateReadAnswers:
    """bob's read receipts reach the server at once; their answers reach his page only on ``release``."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.released = asyncio.Event()

    async def route(self, route: Any) -> None:
        response = await route.fetch()
        self.answers.append(await response.json())
        await self.released.wait()
        await route.fulfill(response=response)


async def test_a_read_receipts_late_answer_does_not_take_the_thumbnail_back(
    browser: Any, dev_stack: Stack
) -> None:
    """The answer to a read receipt is the message as stored when it was read: still ``processing`` if bob
    read it before the pipeline finished. Arriving after the pipeline's ``message.updated`` (an answer and
    an event race), it must not turn bob's thumbnail back into a placeholder for good."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    watch = Watch()
    url = dev_stack.public_url
    alice_id, bob_id = own_people(dev_stack)
    alice = await open_as(browser, watch, url, alice_id)
    bob = await open_as(browser, watch, url, bob_id)
    late = LateReadAnswers()
    await bob.route(re.compile(r"/messages/[^/]+/read$"), late.route)
    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Participants").fill(bob_id)
    await alice.get_by_label("Name (optional)").fill("Late read")
    await alice.get_by_role("button", name="Create").click()
    await alice.get_by_role("heading", name="Late read").wait_for()
    await bob.locator("button.conversation", has_text="Late read").click()
    await bob.get_by_role("heading", name="Late read").wait_for()

    # no media processor yet: bob reads the photo while it is certainly still processing
    processor = dev_stack.services["media-processor"]
    await asyncio.to_thread(processor.stop)
    await drop_file(alice, photo_with_gps(), "late.jpg", "image/jpeg")
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await alice.get_by_label("Caption").fill("Read early")
    await alice.get_by_label("Caption").press("Enter")
    await bob.locator(".photo[data-status='processing']").wait_for()
    for _ in range(300):
        if late.answers:
            break
        await asyncio.sleep(0.1)
    assert [a["metadata"]["status"] for a in late.answers] == ["processing"], late.answers

    # the pipeline finishes: message.updated shows bob the thumbnail; then the read's answer arrives
    await asyncio.to_thread(processor.start, dev_stack.env())
    await asyncio.to_thread(processor.wait_ready)
    photo = "img[alt='Photo: Read early']"
    await bob.wait_for_function(thumbnail_shown(photo), timeout=60_000)
    async with bob.expect_event("requestfinished", lambda r: r.url.endswith("/read")):
        late.released.set()
    with pytest.raises(PlaywrightTimeout):  # the stale answer would show the placeholder within ms
        await bob.locator(".photo[data-status='processing']").wait_for(timeout=2_000)
    assert await bob.evaluate(thumbnail_shown(photo))
    await alice.locator("li.message", has_text="Read early").get_by_text(f"Read by {bob_id}").wait_for()
    watch.check()


async def test_forward_to_shows_the_photo_in_the_other_conversation_at_once(
    browser: Any, server: Server
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("alice")) as api:
        await api.post("/conversations", json={"participantIds": ["bob"], "name": "Holiday"})
        family = (
            await api.post("/conversations", json={"participantIds": ["carol"], "name": "Family"})
        ).json()
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    carol = await open_as(browser, watch, server.url, "carol")
    await carol.locator("button.conversation", has_text="Family").click()
    await alice.locator("button.conversation", has_text="Holiday").click()
    await drop_file(alice, photo_with_gps(), "lake.jpg", "image/jpeg")
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await alice.get_by_label("Caption").fill("Sunset at the lake")
    await alice.get_by_label("Caption").press("Enter")
    await alice.locator(".photo[data-status='ready'] img.loaded").wait_for(timeout=30_000)

    # alice: "Forward to…" on the photo, then the other conversation
    await (
        alice.locator("li.message", has_text="Sunset at the lake")
        .get_by_role("button", name="Forward to…")
        .click()
    )
    dialog = alice.get_by_role("dialog", name="Forward to…")
    await dialog.wait_for()
    assert await dialog.get_by_role("button", name="Holiday").count() == 0  # not where it already is
    await shot(alice, "21-forward-to")
    await dialog.get_by_role("button", name="Family").click()
    await dialog.wait_for(state="hidden")

    # the target opens with the photo ready at once: BlurHash and thumbnail, never "Processing…"
    await alice.get_by_role("heading", name="Family").wait_for()
    forwarded = alice.locator("li.message", has_text="Sunset at the lake")
    await forwarded.locator(".photo[data-status='ready'] img.loaded").wait_for()
    await forwarded.get_by_text("Forwarded").wait_for()
    await carol.wait_for_function(thumbnail_shown("li.message .photo[data-status='ready'] img"))
    assert await carol.locator(".photo[data-status='processing']").count() == 0
    assert await carol.get_by_text("Forwarded").count() == 1
    await shot(carol, "22-forwarded-arrives")
    async with httpx.AsyncClient(base_url=server.url, headers=auth_header("carol")) as api:
        [message] = (await api.get(f"/conversations/{family['conversationId']}/messages")).json()["items"]
    assert message["forwarded"] is True
    assert message["senderId"] == "alice"
    assert message["metadata"]["status"] == "ready"
    assert message["metadata"]["blurhash"]


async def test_the_sender_edits_a_message_and_unsends_a_photo_after_confirming(
    browser: Any, server: Server
) -> None:
    watch = Watch()
    alice = await open_as(browser, watch, server.url, "alice")
    bob = await open_as(browser, watch, server.url, "bob", phone=True)
    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Participants").fill("bob")
    await alice.get_by_label("Name (optional)").fill("Plans")
    await alice.get_by_role("button", name="Create").click()
    await alice.get_by_role("heading", name="Plans").wait_for()
    bobs_entry = bob.locator("button.conversation", has_text="Plans")
    await bobs_entry.wait_for()

    # a text and a photo from alice; bob has the conversation open
    await alice.get_by_label("Message", exact=True).fill("See you at 8")
    await alice.get_by_label("Message", exact=True).press("Enter")
    await drop_file(alice, photo_with_gps(), "lake.jpg", "image/jpeg")
    await alice.wait_for_function("() => document.querySelector('progress')?.value === 1")
    await alice.get_by_label("Caption").fill("The lake")
    await alice.get_by_label("Caption").press("Enter")
    photo = "img[alt='Photo: The lake']"
    await alice.wait_for_function(thumbnail_shown(photo))
    await bobs_entry.click()
    await bob.wait_for_function(thumbnail_shown(photo))
    photo_url = await bob.locator(photo).get_attribute("src")
    assert photo_url is not None

    # alice edits her text: both see the new words and "edited"
    text = alice.locator("li.message.mine", has_text="See you at 8")
    await text.get_by_role("button", name="Edit").click()
    await alice.get_by_label("Edit message").fill("See you at 9")
    await alice.get_by_role("button", name="Save").click()
    for page in (alice, bob):
        edited = page.locator("li.message", has_text="See you at 9")
        await edited.locator(".edited").wait_for()
    assert await bob.locator("li.message", has_text="See you at 8").count() == 0
    await shot(bob, "20-bob-sees-the-edit")

    # alice unsends the photo: a dismissed confirmation does nothing; an accepted one deletes it for both
    mine = alice.locator("li.message.mine", has=alice.locator(photo))
    alice.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await mine.get_by_role("button", name="Delete").click()
    await asyncio.sleep(0.5)
    assert await bob.locator(photo).count() == 1
    alice.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await mine.get_by_role("button", name="Delete").click()
    await alice.locator("li.message.deleted", has_text="You deleted this message").wait_for()
    await bob.locator("li.message.deleted", has_text="This message was deleted").wait_for()
    assert await bob.locator(photo).count() == 0
    assert await bob.locator("li.message", has_text="The lake").count() == 0
    await shot(bob, "21-bob-sees-the-tombstone")
    await shot(alice, "21-alice-deleted")
    # bob's list says so too; and the image itself is gone from the server
    assert "Message deleted" in await bob.locator("button.conversation", has_text="Plans").inner_text()
    async with httpx.AsyncClient(headers=auth_header("bob")) as api:
        gone = await api.get(photo_url)
    assert (gone.status_code, gone.json()["code"]) == (404, "message_deleted")
    watch.check()
