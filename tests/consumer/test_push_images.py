"""Pushes that show the photo: the whole path, from a send to an FCM and an APNs request per offline device,
and the thumbnail link they carry, served by the image proxy without a token, for that image only, until it
expires.

Real parts throughout: upload, message, media processor, image proxy and notification consumer in one app
on uvicorn (tests/image_stack.py), the FCM stand-in (tests/consumer/receivers.py) and the APNs one over
HTTP/2 (tests/consumer/apns_receiver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from chat_core import keys
from tests.conftest import auth_header
from tests.consumer.apns_receiver import KEY_ID, TEAM_ID, TOPIC, ApnsReceiver, auth_key, served
from tests.consumer.receivers import FcmReceiver, service_account
from tests.image_stack import ImageStack, image_bucket, make_stack, store_kind

__all__ = ["image_bucket", "make_stack", "store_kind"]  # fixtures of tests/image_stack.py

MakeStack = Callable[..., Awaitable[ImageStack]]
APNS_TOKEN = "c0" * 32
FCM_TOKEN = "fcm-registration-token-of-bob"
LINK_SECONDS = 15  # long enough for a loaded machine to process the image, short enough to wait out


@dataclass
class PushRig:
    stack: ImageStack
    fcm: FcmReceiver
    apns: ApnsReceiver

    async def conversation_with_devices(self, **create: Any) -> str:
        """alice, bob (Android, FCM) and carol (iPhone, raw APNs token), created through the API."""
        created = await self.stack.http.post(
            "/conversations",
            json={"participantIds": ["bob", "carol"], **create},
            headers=auth_header("alice"),
        )
        assert created.status_code == 201, created.text
        for user, token, body in (
            ("bob", FCM_TOKEN, {"platform": "android"}),  # an old client: no provider, FCM assumed
            ("carol", APNS_TOKEN, {"platform": "ios", "provider": "apns"}),
        ):
            registered = await self.stack.http.put(
                f"/me/devices/{token}", json=body, headers=auth_header(user)
            )
            assert registered.status_code == 200, registered.text
        return str(created.json()["conversationId"])

    async def pushes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The one FCM message and the one APNs payload this test's send produced."""
        await self.apns.wait_for(1)
        async with asyncio.timeout(15):
            while not self.fcm.sent:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a second push per device would have arrived by now
        [fcm] = self.fcm.sent
        [apns] = self.apns.accepted
        return fcm, apns.payload


@pytest.fixture
async def push_rig(
    make_stack: MakeStack, serve: Any, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[PushRig]]]:
    async with contextlib.AsyncExitStack() as opened:

        async def make(**env: str) -> PushRig:
            account, public_key = service_account()
            fcm = FcmReceiver(public_key=public_key, client_email=account["client_email"])
            fcm.base_url = await serve(fcm.app())
            credentials = tmp_path / "service-account.json"
            credentials.write_text(json.dumps(account))
            key_file, apns_public_key = auth_key(tmp_path)
            apns = ApnsReceiver(apns_public_key)
            apns_url = await opened.enter_async_context(served(apns))
            stack = await make_stack(
                {
                    "PUSH_PROVIDER": "fcm,apns",
                    "FCM_CREDENTIALS_FILE": str(credentials),
                    "FCM_ENDPOINT": fcm.base_url,
                    "FCM_TOKEN_URL": f"{fcm.base_url}/token",
                    "APNS_KEY_FILE": str(key_file),
                    "APNS_KEY_ID": KEY_ID,
                    "APNS_TEAM_ID": TEAM_ID,
                    "APNS_TOPIC": TOPIC,
                    "APNS_ENDPOINT": apns_url,
                    "APNS_ENVIRONMENT": "sandbox",
                    "PUSH_IMAGE_URL_SECONDS": str(LINK_SECONDS),
                    **env,
                },
                consumer=True,
            )
            return PushRig(stack, fcm, apns)

        yield make


async def _send_image(stack: ImageStack, cid: str) -> dict[str, Any]:
    uploaded = await stack.upload("alice", cid)
    sent = await stack.send("alice", cid, uploaded)
    assert sent.status_code == 201, sent.text
    return dict(sent.json())


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _get(stack: ImageStack, url: str) -> httpx.Response:
    """GET a link as a phone would: no token, no cookie, following a redirect to the bytes."""
    assert url.startswith(stack.base_url)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=15, follow_redirects=True) as phone:
        return await phone.get(url.removeprefix(stack.base_url))


async def test_each_offline_device_gets_one_push_from_its_provider_with_a_thumbnail_link_for_one_image(
    push_rig: Callable[..., Awaitable[PushRig]],
) -> None:
    rig = await push_rig()
    stack = rig.stack
    cid = await rig.conversation_with_devices()
    other = await _send_image(stack, await rig.conversation_with_devices())  # another image, elsewhere
    await rig.pushes()
    rig.fcm.sent.clear()
    rig.apns.accepted.clear()
    rig.apns.requests.clear()
    sent = await _send_image(stack, cid)

    fcm, apns = await rig.pushes()
    assert fcm["token"] == FCM_TOKEN
    link = fcm["notification"]["image"]
    assert fcm["apns"]["fcm_options"]["image"] == link
    assert fcm["apns"]["payload"]["aps"]["mutable-content"] == 1
    assert apns["aps"]["mutable-content"] == 1
    apns_link = apns["image"]
    [apns_request] = rig.apns.accepted
    assert apns_request.token == APNS_TOKEN
    assert apns_request.headers["apns-collapse-id"] == cid
    for url, user in ((link, "bob"), (apns_link, "carol")):
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["variant"] == "thumbnail"
        assert query["push_user"] == user
        assert int(query["push_expires"]) <= time.time() + LINK_SECONDS
        assert urlsplit(url).path == f"/images/{cid}/{sent['metadata']['object_key']}"

    # The link serves the thumbnail, without a token (the proxy would wait while the image is processed).
    message = await stack.finished(cid, sent["messageId"])
    served_bytes = await _get(stack, link)
    assert served_bytes.status_code == 200, served_bytes.text
    assert message.metadata is not None
    assert message.metadata.variants is not None
    thumbnail_key = keys.derivative_key(
        cid, message.message_id, "thumbnail", message.metadata.variants.thumbnail.content_type
    )
    assert served_bytes.content == (await stack.store.read(thumbnail_key))[1]
    carols = await _get(stack, apns_link)
    assert carols.content == served_bytes.content, carols.text

    # ... and nothing else: another variant, another image, another recipient, a changed expiry.
    other_key = other["metadata"]["object_key"]
    forged = [
        _with_query(link, variant="preview"),
        _with_query(link, variant="original"),
        link.replace(sent["metadata"]["object_key"], other_key),
        _with_query(link, push_user="carol"),
        _with_query(link, push_expires=str(int(time.time()) + 3600)),
        _with_query(link, push_signature="A" * 43),
    ]
    for url in forged:
        refused = await _get(stack, url)
        assert refused.status_code in (403, 404), (url, refused.status_code)
        assert refused.json()["code"] in ("push_link_invalid", "conversation_not_found"), url
    without_link = await _get(stack, link.split("?")[0] + "?variant=thumbnail")
    assert without_link.status_code == 401

    # Refused once it has expired.
    expires = int(dict(parse_qsl(urlsplit(link).query))["push_expires"])
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
    expired = await _get(stack, link)
    assert expired.status_code == 403
    assert expired.json()["code"] == "push_link_expired"


async def test_a_push_link_stops_working_when_its_recipient_leaves(
    push_rig: Callable[..., Awaitable[PushRig]],
) -> None:
    rig = await push_rig()
    cid = await rig.conversation_with_devices()
    await _send_image(rig.stack, cid)
    fcm, _apns = await rig.pushes()
    left = await rig.stack.http.delete(f"/conversations/{cid}/participants/bob", headers=auth_header("bob"))
    assert left.status_code == 204
    async with asyncio.timeout(10):  # the proxy's membership cache (MEMBERSHIP_CACHE_SECONDS) catches up
        while (refused := await _get(rig.stack, fcm["notification"]["image"])).status_code != 404:
            await asyncio.sleep(0.2)
    assert refused.json()["code"] == "conversation_not_found"


async def test_push_image_previews_off_sends_the_push_without_an_image(
    push_rig: Callable[..., Awaitable[PushRig]],
) -> None:
    rig = await push_rig(PUSH_IMAGE_PREVIEWS="false")
    await _send_image(rig.stack, await rig.conversation_with_devices())
    fcm, apns = await rig.pushes()
    assert "image" not in fcm["notification"]
    assert "fcm_options" not in fcm["apns"]
    assert "image" not in apns
    assert "mutable-content" not in apns["aps"]


async def test_a_conversation_can_opt_out_of_image_previews(
    push_rig: Callable[..., Awaitable[PushRig]],
) -> None:
    rig = await push_rig()
    quiet = await rig.conversation_with_devices(pushImagePreviews=False)
    await _send_image(rig.stack, quiet)
    fcm, apns = await rig.pushes()
    assert "image" not in fcm["notification"]
    assert "image" not in apns
    # Turned on again by an admin: the next push shows the photo.
    changed = await rig.stack.http.patch(
        f"/conversations/{quiet}", json={"pushImagePreviews": True}, headers=auth_header("alice")
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["pushImagePreviews"] is True
    rig.fcm.sent.clear()
    rig.apns.accepted.clear()
    await _send_image(rig.stack, quiet)
    fcm, apns = await rig.pushes()
    assert fcm["notification"]["image"].startswith(f"{rig.stack.base_url}/images/{quiet}/")
    assert apns["image"].startswith(f"{rig.stack.base_url}/images/{quiet}/")


async def test_a_forward_is_pushed_like_any_send_with_a_link_to_its_own_copy(
    push_rig: Callable[..., Awaitable[PushRig]],
) -> None:
    rig = await push_rig()
    stack = rig.stack
    source_cid = await stack.conversation("alice")
    image = await stack.share("alice", source_cid)
    assert image.message is not None
    target = await rig.conversation_with_devices()
    forwarded = await stack.http.post(
        f"/conversations/{source_cid}/messages/{image.message.message_id}/forward",
        json={"conversationId": target},
        headers=auth_header("alice"),
    )
    assert forwarded.status_code == 201, forwarded.text
    fcm, apns = await rig.pushes()
    object_key = forwarded.json()["metadata"]["object_key"]
    for link in (fcm["notification"]["image"], apns["image"]):
        assert urlsplit(link).path == f"/images/{target}/{object_key}"
        assert source_cid not in link
        served_bytes = await _get(stack, link)
        assert served_bytes.status_code == 200
    copied = keys.derivative_key(target, forwarded.json()["messageId"], "thumbnail", "image/jpeg")
    assert served_bytes.content == (await stack.store.read(copied))[1]
