"""The harness really gives each backend (the run's summary says which and how)."""

from __future__ import annotations

import urllib.request

import redis.asyncio as aioredis

from tests import harness


async def test_redis_answers(redis_backend: harness.Backend) -> None:
    client = aioredis.from_url(redis_backend.address)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


def test_localstack_runs_s3_and_sqs(localstack: harness.Backend) -> None:
    with urllib.request.urlopen(f"{localstack.address}/_localstack/health", timeout=5) as response:  # noqa: S310
        body = response.read()
    assert b'"s3": "running"' in body
    assert b'"sqs": "running"' in body


def test_the_firestore_emulator_answers(firestore_emulator: harness.Backend) -> None:
    with urllib.request.urlopen(f"http://{firestore_emulator.address}/", timeout=5) as response:
        assert response.read().strip() == b"Ok"
