"""Unsend on the whole stack, embedded and cloud: every stored byte of the image goes, at once and durably.

The closing number of the issue comes from here: ``test_every_byte_of_an_unsent_image_is_gone_within_seconds``
prints how long after the DELETE was sent the last object was gone on each stack (``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import image_proxy.app
import media_processor.app
from chat_core import keys
from chat_core.chatstore import Message
from chat_core.composition import Composition
from chat_core.media_jobs import MediaJob
from media_processor.worker import MediaWorker
from message_service.service import delete_message
from tests.chaos.faultproxy import running_proxy
from tests.conftest import auth_header
from tests.image_stack import ImageStack, Uploaded
from tests.lifecycle.conftest import LifecycleStackFactory

ERASE_DEADLINE_SECONDS = 30.0  # the relay backs off to 10 s at most; a delete after an outage waits that


async def remaining_objects(stack: ImageStack, cid: str, message_id: str, raw_key: str) -> list[str]:
    """Every object of the message still stored: derivatives, the raw upload, a refusal note."""
    left = [info.key async for info in stack.store.list(keys.derivative_prefix(cid, message_id))]
    for key in (raw_key, keys.refusal_key(raw_key)):
        if await stack.store.head(key) is not None:
            left.append(key)
    return left


async def wait_until_gone(stack: ImageStack, cid: str, message_id: str, raw_key: str) -> float:
    """Seconds until nothing of the message is stored (polled every 10 ms)."""
    started = time.perf_counter()
    while await remaining_objects(stack, cid, message_id, raw_key):
        assert time.perf_counter() - started < ERASE_DEADLINE_SECONDS, "bytes of a deleted message remain"
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


async def shared_and_seen(stack: ImageStack, cid: str) -> tuple[Uploaded, Message, str]:
    shared = await stack.share("alice", cid)
    assert shared.message is not None
    # Seen through the proxy first, so every replica remembers the finished image.
    for variant in ("", "?variant=thumbnail"):
        seen = await stack.http.get(shared.file_url + variant, headers=auth_header("bob"))
        assert seen.status_code == 302, seen.text
    return shared, shared.message, keys.stored_key(cid, shared.object_key)


async def test_every_byte_of_an_unsent_image_is_gone_within_seconds(
    make_lifecycle_stack: LifecycleStackFactory, stack_kind: str
) -> None:
    stack = await make_lifecycle_stack()
    cid = await stack.conversation("alice", "bob")
    shared, message, raw_key = await shared_and_seen(stack, cid)
    assert await remaining_objects(stack, cid, message.message_id, raw_key)  # the derivatives are there
    sent = time.perf_counter()
    deleted = await stack.http.delete(
        f"/conversations/{cid}/messages/{message.message_id}", headers=auth_header("alice")
    )
    answered = time.perf_counter() - sent
    assert deleted.status_code == 204, deleted.text
    elapsed = answered + await wait_until_gone(stack, cid, message.message_id, raw_key)
    print(
        f"\n[{stack_kind}] DELETE answered in {answered * 1000:.0f} ms; the last byte of the image was "
        f"gone {elapsed * 1000:.0f} ms after the DELETE was sent"
    )
    # The proxy says so for every variant, and the list keeps a tombstone in its place.
    for variant in ("", "?variant=thumbnail", "?variant=preview"):
        gone = await stack.http.get(shared.file_url + variant, headers=auth_header("bob"))
        assert (gone.status_code, gone.json()["code"]) == (404, "message_deleted")
    listed = await stack.http.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
    [tombstone] = msgspec.convert(listed.json()["items"], list[Message])
    assert (tombstone.deleted, tombstone.deleted_by, tombstone.content, tombstone.metadata) == (
        True,
        "alice",
        None,
        None,
    )


async def test_the_bytes_go_after_a_crash_between_the_tombstone_and_their_deletion(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    """The process that wrote the tombstone died before its fan-out ran: the relay finishes the job."""
    stack = await make_lifecycle_stack()
    cid = await stack.conversation("alice", "bob")
    _shared, message, raw_key = await shared_and_seen(stack, cid)

    class Crashed:
        """The fan-out of a process that died right after the store's commit: nothing happens."""

        async def message_created(self, *_: object) -> None: ...

        async def event_stored(self, *_: object) -> None: ...

    assert await delete_message(
        stack.backends.messages, Crashed(), cid, message, deleted_by="alice", reason="sender"
    )
    assert await remaining_objects(stack, cid, message.message_id, raw_key)  # nothing erased yet
    await wait_until_gone(stack, cid, message.message_id, raw_key)
    # Released once the last byte was gone (the release follows the erasure by a moment).
    for _ in range(200):
        pending = await stack.backends.outbox.pending_outbox(older_than=0, limit=100)
        if not [e for e in pending if e.message_id == message.message_id]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the deletion's outbox entry was never released")


async def test_an_object_store_outage_delays_the_byte_deletion_and_never_loses_it(
    make_lifecycle_stack: LifecycleStackFactory, stack_kind: str, request: pytest.FixtureRequest
) -> None:
    """S3 unreachable between the tombstone and the erasure (cloud stack): the DELETE still answers 204,
    the proxy already says 404 message_deleted, and the bytes go once S3 is back."""
    if stack_kind != "cloud":
        return  # the local disk has no outage of its own: the crash above covers the embedded stack
    localstack = request.getfixturevalue("localstack")
    upstream = localstack.address.removeprefix("http://")
    async with running_proxy(upstream) as proxy:
        stack = await make_lifecycle_stack(s3_endpoint=f"http://{proxy.address}")
        cid = await stack.conversation("alice", "bob")
        shared, message, raw_key = await shared_and_seen(stack, cid)
        proxy.set("reset")
        deleted = await stack.http.delete(
            f"/conversations/{cid}/messages/{message.message_id}", headers=auth_header("alice")
        )
        assert deleted.status_code == 204, deleted.text
        gone = await stack.http.get(shared.file_url, headers=auth_header("bob"))
        assert gone.status_code == 404, (gone.status_code, gone.headers, gone.text)
        assert gone.json()["code"] == "message_deleted"
        await asyncio.sleep(1.0)
        # The job is still owed: its entry waits in the outbox (the store is up, only S3 is not).
        pending = await stack.backends.outbox.pending_outbox(older_than=0, limit=100)
        assert [e.kind for e in pending if e.message_id == message.message_id] == ["message.deleted"]
        proxy.set("pass")
        await wait_until_gone(stack, cid, message.message_id, raw_key)


async def test_a_media_job_for_an_unsent_message_does_nothing_but_make_sure_its_bytes_are_gone(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    stack = await make_lifecycle_stack(processor=False)  # the media job waits until we run it
    cid = await stack.conversation("alice", "bob")
    uploaded = await stack.upload("alice", cid)
    sent = await stack.send("alice", cid, uploaded)
    assert sent.status_code == 201, sent.text
    message_id = sent.json()["messageId"]
    raw_key = keys.stored_key(cid, uploaded.object_key)
    info = await stack.store.head(raw_key)
    assert info is not None
    deleted = await stack.http.delete(
        f"/conversations/{cid}/messages/{message_id}", headers=auth_header("alice")
    )
    assert deleted.status_code == 204
    worker = MediaWorker.from_ports(stack.backends.settings, media_processor.app.ports(stack.backends))
    job = MediaJob(message_id=message_id, conversation_id=cid, object_key=raw_key, object_etag=info.etag)
    assert await worker.process(job) == "skipped"
    assert await remaining_objects(stack, cid, message_id, raw_key) == []
    stored = await stack.backends.messages.get_message(cid, message_id)
    assert stored is not None
    assert (stored.deleted, stored.metadata) == (True, None)  # never "finished" into an image again


async def test_every_proxy_replica_forgets_an_unsent_image_at_once(
    make_lifecycle_stack: LifecycleStackFactory,
    request: pytest.FixtureRequest,
    serve: Any,
    tmp_path: Path,
) -> None:
    """Two replicas over one Redis bus: the one that did not see the DELETE had the image remembered
    (finished images are cached per process) and still answers 404 message_deleted right after the 204."""
    redis = request.getfixturevalue("redis_backend")
    bus = {"EVENT_BUS": "redis", "REDIS_URL": redis.address, "LIMIT_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}"}
    stack = await make_lifecycle_stack(bus)
    other = Composition(
        msgspec.structs.replace(stack.backends.settings)
    )  # same stores, its own process state
    other_url = await serve(image_proxy.app.create_app(other.settings, other))
    cid = await stack.conversation("alice", "bob")
    shared = await stack.share("alice", cid)
    assert shared.message is not None
    path = shared.file_url.removeprefix(stack.base_url)
    async with httpx.AsyncClient(base_url=other_url, headers=auth_header("bob")) as replica:
        for variant in ("", "?variant=preview"):
            assert (await replica.get(path + variant)).status_code == 302  # now remembered there
        deleted = await stack.http.delete(
            f"/conversations/{cid}/messages/{shared.message.message_id}", headers=auth_header("alice")
        )
        assert deleted.status_code == 204
        deadline = time.perf_counter() + 1.0  # one bus hop
        while (answer := await replica.get(path)).status_code != 404:
            assert time.perf_counter() < deadline, answer.status_code
            await asyncio.sleep(0.01)
        for variant in ("", "?variant=thumbnail", "?variant=preview"):
            gone = await replica.get(path + variant)
            assert (gone.status_code, gone.json()["code"]) == (404, "message_deleted")
