"""The whole image stack (upload, message, media processor, proxy) on each of the two stacks a deployment
runs: embedded (SQLite + local disk) and cloud (the Firestore emulator + S3 on LocalStack)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.image_stack import ImageStack, image_bucket, stack_factory

__all__ = ["image_bucket", "make_lifecycle_stack", "stack_kind"]

LifecycleStackFactory = Callable[..., Awaitable[ImageStack]]


@pytest.fixture(
    params=["embedded", pytest.param("cloud", marks=[pytest.mark.localstack, pytest.mark.firestore])]
)
def stack_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_lifecycle_stack(
    request: pytest.FixtureRequest, stack_kind: str, tmp_path: Path, serve: Any
) -> AsyncIterator[LifecycleStackFactory]:
    """``await make(env, s3_endpoint=...)``: the stack of this test's kind (``s3_endpoint``: another way
    to the same LocalStack, e.g. through a fault proxy)."""
    cloud = stack_kind == "cloud"
    localstack = request.getfixturevalue("localstack") if cloud else None
    bucket = request.getfixturevalue("image_bucket") if cloud else ""
    store_env: dict[str, str] = {}
    if cloud:
        emulator = request.getfixturevalue("firestore_emulator")
        store_env = {
            "MESSAGE_STORE": "firestore",
            "FIRESTORE_PROJECT_ID": request.getfixturevalue("firestore_project"),
            "FIRESTORE_EMULATOR_HOST": emulator.address,
        }
    async with stack_factory(tmp_path, serve, localstack, bucket) as make:

        async def make_for_kind(
            env: Mapping[str, str] | None = None, *, s3_endpoint: str = "", processor: bool = True
        ) -> ImageStack:
            extra = {**store_env, **(env or {})}
            if s3_endpoint:
                extra["AWS_ENDPOINT_URL_S3"] = s3_endpoint
            return await make("s3" if cloud else "local", extra, processor=processor)

        yield make_for_kind
