"""A media job is bounded (``MediaSettings.longest_job_seconds``): one stuck on a backend call that never
answers is stopped at the bound and retried, its slot goes back, and the image worker pool keeps its size.

The fault is the one the chaos run found under a Firestore blackhole: a request swallowed on a connection
that stays open, which the store's client (no deadline of its own) would wait for forever. Before the
bound, every job slot ended up held that way and no image was processed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from media_processor.pool import MediaProcessor, PoolSettings
from media_processor.worker import MediaWorker, limits_from
from tests.image_stack import ImageStack

JOB_BOUND_SECONDS = 1.0


class Swallowed:
    """The message store, except that its first ``hangs`` reads never answer (as behind a blackhole)."""

    def __init__(self, store: Any, hangs: int) -> None:
        self._store = store
        self.hangs = hangs
        self.stopped = 0  # hung reads that were given up (cancelled by the job's bound)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_message(self, conversation_id: str, message_id: str) -> Any:
        if self.hangs > 0:
            self.hangs -= 1
            try:
                await asyncio.Event().wait()  # never set: the answer never comes
            except asyncio.CancelledError:
                self.stopped += 1
                raise
        return await self._store.get_message(conversation_id, message_id)


def retried() -> float:
    return (
        REGISTRY.get_sample_value("chat_media_jobs_total", {"outcome": "retried", "reason": "error"}) or 0.0
    )


@pytest.mark.parametrize("store_kind", ["local"])
async def test_a_job_stuck_on_a_backend_is_stopped_at_its_bound_and_the_pool_keeps_its_size(
    make_stack: Callable[..., Awaitable[ImageStack]],
) -> None:
    stack = await make_stack(processor=False)  # media jobs wait in the queue for the worker built here
    backends = stack.backends
    settings = backends.settings
    cid = await stack.conversation("alice", "bob")
    sent = []
    for _ in range(2):
        response = await stack.send("alice", cid, await stack.upload("alice", cid))
        assert response.status_code == 201, response.text
        sent.append(response.json()["messageId"])

    processor = MediaProcessor(limits_from(settings), PoolSettings(workers=1))
    # Every job slot (two per image worker) is taken by a job whose store read never answers.
    store = Swallowed(backends.messages, hangs=2)
    worker = MediaWorker(
        backends.media_queue,
        store,
        backends.conversations,
        backends.outbox,
        backends.object_store,
        backends.event_bus,
        processor,
        backends.storage_ledger,
        max_bytes=settings.images.max_bytes,
        max_pixels=settings.media.max_image_pixels,
        wait_seconds=0.2,
        max_receives=settings.media.max_receives,
        drain_seconds=1.0,
        job_deadline_seconds=JOB_BOUND_SECONDS,
    )
    before = retried()
    async with worker.worker():
        # Stopped at the bound and retried (after RETRY_BASE_SECONDS): both images are still processed.
        finished = [await stack.finished(cid, message_id, timeout=30) for message_id in sent]
        health = processor.health()
        await worker.pool_ready()  # readiness: the pool is whole
    assert [m.metadata.status for m in finished if m.metadata is not None] == ["ready", "ready"]
    assert store.stopped == 2
    assert retried() - before >= 2
    assert (health.size, health.alive, health.problem()) == (1, 1, None)
