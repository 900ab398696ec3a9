"""Membership lookups with and without the cache: what a chat screen opening costs the message store.

    uv run python scripts/bench_membership.py [--store sqlite|firestore] [--screens 200] [--images 40]

A "screen" is one member opening a conversation: ``--images`` image requests at once, each needing the
membership answer. Measured twice over the same real message store: ``MEMBERSHIP_CACHE_SECONDS=5`` (the
default) and ``0`` (every request reads the store). Two levels:

* lookups: ``MembershipCache.check`` alone, all screens' lookups concurrently;
* proxy: real ``GET /images/...`` requests through the image proxy app (redirect mode, local disk store),
  in-process over ASGI, so the figure is the service's own cost per request.

Firestore needs ``FIRESTORE_EMULATOR_HOST``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import httpx

import image_proxy.app
from chat_core import keys
from chat_core.auth import mint_token
from chat_core.chatstore import ChatStore, Conversation
from chat_core.composition import Composition
from chat_core.logging import configure_logging
from chat_core.membership import MembershipCache
from chat_core.settings import Settings, load_settings

SECRET = "bench-secret-0123456789abcdef0123456789"  # noqa: S105 - a throwaway HS256 key for the run


class CountingStore:
    """The real store; counts the membership reads."""

    def __init__(self, inner: ChatStore) -> None:
        self.inner = inner
        self.reads = 0

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        self.reads += 1
        return await self.inner.get_participants(conversation_id)


def settings_for(store: str, data_dir: str, cache_seconds: float) -> Settings:
    env = {
        "AUTH_JWT_SECRET": SECRET,
        "DATA_DIR": data_dir,
        "MESSAGE_STORE": store,
        "MEMBERSHIP_CACHE_SECONDS": str(cache_seconds),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "ERROR",
        "FIRESTORE_PROJECT_ID": f"bench-{uuid.uuid4().hex[:8]}",
    }
    if host := os.environ.get("FIRESTORE_EMULATOR_HOST"):
        env["FIRESTORE_EMULATOR_HOST"] = host
    return load_settings(env)


async def make_conversations(store: ChatStore, count: int, members: int) -> list[tuple[str, list[str]]]:
    now = dt.datetime.now(dt.UTC)
    made = []
    for _ in range(count):
        cid = uuid.uuid4().hex
        users = [f"user{n}" for n in range(members)]
        await store.create_conversation(
            Conversation(
                conversation_id=cid, participants=tuple(users), name=None, created_at=now, updated_at=now
            )
        )
        made.append((cid, users))
    return made


async def lookups(args: argparse.Namespace, cache_seconds: float) -> tuple[float, int, float]:
    with tempfile.TemporaryDirectory() as data_dir:
        backends = Composition(settings_for(args.store, data_dir, cache_seconds))
        store = backends.chat_store
        async with backends:
            conversations = await make_conversations(store, args.conversations, args.members)
            counting = CountingStore(store)
            cache = MembershipCache(counting, ttl_seconds=cache_seconds)  # type: ignore[arg-type]
            latencies: list[float] = []

            async def one(cid: str, user: str) -> None:
                started = time.perf_counter()
                assert (await cache.check(cid, user)).member
                latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            for screen in range(args.screens):
                cid, users = conversations[screen % len(conversations)]
                user = users[screen % len(users)]
                await asyncio.gather(*(one(cid, user) for _ in range(args.images)))
            elapsed = time.perf_counter() - started
            return elapsed, counting.reads, statistics.quantiles(latencies, n=100)[98] * 1e6


async def proxy(args: argparse.Namespace, cache_seconds: float) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = settings_for(args.store, data_dir, cache_seconds)
        backends = Composition(settings)
        app: Any = image_proxy.app.create_app(settings, backends)
        membership = backends.membership
        counting = CountingStore(backends.chat_store)
        membership._store = counting  # type: ignore[assignment] # count the reads of the real store
        transport = httpx.ASGITransport(app=app)
        async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            conversations = await make_conversations(backends.chat_store, args.conversations, args.members)
            images: dict[str, str] = {}
            for cid, users in conversations:
                object_key = keys.new_object_key(users[0], "image/jpeg")
                await backends.object_store.put(
                    keys.stored_key(cid, object_key), b"\xff\xd8\xff", content_type="image/jpeg"
                )
                images[cid] = object_key
            tokens: dict[str, str] = {}
            started = time.perf_counter()
            requests = 0
            for screen in range(args.screens):
                cid, users = conversations[screen % len(conversations)]
                user = users[screen % len(users)]
                token = tokens.setdefault(user, mint_token(SECRET, user))
                headers = {"Authorization": f"Bearer {token}"}
                responses = await asyncio.gather(
                    *(client.get(f"/images/{cid}/{images[cid]}", headers=headers) for _ in range(args.images))
                )
                assert all(r.status_code == 302 for r in responses)
                requests += len(responses)
            elapsed = time.perf_counter() - started
            return requests / elapsed, counting.reads


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "firestore"], default="sqlite")
    parser.add_argument("--screens", type=int, default=200)
    parser.add_argument("--images", type=int, default=40, help="image requests per screen, at once")
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--members", type=int, default=50)
    args = parser.parse_args()
    # The audit line per request (which no level silences) would drown the figures: they go to a sink.
    configure_logging("ERROR", stream=io.BytesIO())
    total = args.screens * args.images
    print(
        f"{args.store}: {args.screens} screens x {args.images} images over {args.conversations} "
        f"conversations of {args.members} members ({total} lookups)"
    )
    print(f"{'':22} {'wall s':>8} {'lookups/s':>10} {'p99 µs':>9} {'store reads':>12}")
    for label, seconds in (("cache (5 s)", 5.0), ("no cache", 0.0)):
        elapsed, reads, p99 = await lookups(args, seconds)
        print(f"lookups, {label:13} {elapsed:8.3f} {total / elapsed:10.0f} {p99:9.0f} {reads:12d}")
    print(f"{'':22} {'requests/s':>10} {'store reads':>12}")
    for label, seconds in (("cache (5 s)", 5.0), ("no cache", 0.0)):
        rate, reads = await proxy(args, seconds)
        print(f"proxy, {label:15} {rate:10.0f} {reads:12d}")


if __name__ == "__main__":
    asyncio.run(main())
