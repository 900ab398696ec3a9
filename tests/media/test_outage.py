"""``message.updated`` is durable: an image finished while Redis is down is announced once it is back.

The media processor stores the finished image and its event outbox entry in one transaction; its own
publish fails with Redis down, and the message service's relay publishes the entry once Redis is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

import media_processor.app
from chat_core.realtime import conversation_channel
from chat_core.realtime.events import Envelope, decode_envelope
from media_processor.worker import MediaWorker
from tests import harness
from tests.image_stack import ImageStack


class Heard:
    """Every envelope published on one conversation's channel, by type."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.changed = asyncio.Event()

    def __call__(self, _channel: str, payload: bytes) -> None:
        envelope = decode_envelope(payload)
        if envelope is not None:
            self.envelopes.append(envelope)
            self.changed.set()

    async def first(self, kind: str, timeout: float) -> Envelope:
        async with asyncio.timeout(timeout):
            while True:
                for envelope in self.envelopes:
                    if envelope.type == kind:
                        return envelope
                self.changed.clear()
                await self.changed.wait()


def bus_failures() -> float:
    return REGISTRY.get_sample_value("chat_outbox_relay_errors_total", {"target": "bus"}) or 0.0


@pytest.mark.parametrize("store_kind", ["local"])
async def test_an_image_finished_while_redis_is_down_is_announced_after_it_is_back(
    make_stack: Callable[..., Awaitable[ImageStack]], private_redis: harness.Backend
) -> None:
    stack = await make_stack({"EVENT_BUS": "redis", "REDIS_URL": private_redis.address}, processor=False)
    cid = await stack.conversation("alice", "bob")
    heard = Heard()
    await stack.backends.event_bus.subscribe([conversation_channel(cid)], heard)
    uploaded = await stack.upload("alice", cid)
    sent = await stack.send("alice", cid, uploaded)
    assert sent.status_code == 201
    await heard.first("message.created", timeout=10)  # delivered: its media job is queued

    await asyncio.to_thread(private_redis.stop)
    failures = bus_failures()
    worker = MediaWorker.from_ports(stack.backends.settings, media_processor.app.ports(stack.backends))
    async with worker.worker():
        finished = await stack.finished(cid, sent.json()["messageId"])
        async with asyncio.timeout(20):
            while bus_failures() == failures:  # its own publish failed: the event waits in the outbox
                await asyncio.sleep(0.05)
    assert finished.metadata is not None
    assert finished.metadata.status == "ready"
    assert [e.type for e in heard.envelopes] == ["message.created"]
    await asyncio.to_thread(private_redis.start)

    updated = await heard.first("message.updated", timeout=30)
    assert updated.message == finished
    assert updated.members == ("alice", "bob")
