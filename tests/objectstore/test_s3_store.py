"""What only the S3 adapter has to prove, on LocalStack with signature validation on: that the checks are
real, that presigned URLs use the public endpoint, and that the bucket ``chat-management setup`` provisions
is one browsers can upload to, in any region.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest

from chat_core.composition import Composition
from chat_core.objectstore import ObjectStore
from chat_core.objectstore.s3 import S3ObjectStore
from tests import harness
from tests.conftest import make_settings, unique

pytestmark = pytest.mark.localstack


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def _store(
    tmp_path: Path,
    localstack: harness.Backend,
    bucket: str,
    env: Mapping[str, str] | None = None,
    *,
    provisioned: bool = True,
) -> AsyncIterator[ObjectStore]:
    settings = make_settings(
        tmp_path,
        {
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": bucket,
            "AWS_ENDPOINT_URL": localstack.address,
            **(env or {}),
        },
    )
    backends = Composition(settings)
    store = backends.object_store
    if provisioned:
        await harness.provision(settings)
    async with backends:
        yield store


@pytest.fixture
async def store(tmp_path: Path, localstack: harness.Backend) -> AsyncIterator[ObjectStore]:
    async for store in _store(
        tmp_path, localstack, unique("s3store"), {"CORS_ALLOW_ORIGINS": "https://chat.example"}
    ):
        yield store


async def test_localstack_rejects_a_url_signed_with_the_wrong_secret(
    store: ObjectStore, tmp_path: Path, localstack: harness.Backend, http: httpx.AsyncClient
) -> None:
    """Proof that signature validation is on: otherwise every refusal test would pass for nothing."""
    assert isinstance(store, S3ObjectStore)
    async for impostor in _store(
        tmp_path / "impostor", localstack, store.bucket, {"AWS_SECRET_ACCESS_KEY": "wrong"}
    ):
        upload = impostor.presign_put("c/a.png", content_type="image/png", content_length=None, expires_in=60)
        response = await http.put(upload.url, content=b"x", headers=upload.headers)
        assert response.status_code == 403
        assert "SignatureDoesNotMatch" in response.text
    assert await store.head("c/a.png") is None


async def test_presigned_urls_point_at_the_public_endpoint(
    store: ObjectStore, tmp_path: Path, localstack: harness.Backend, http: httpx.AsyncClient
) -> None:
    assert isinstance(store, S3ObjectStore)
    public = localstack.address.replace("127.0.0.1", "localhost")
    async for clients_view in _store(
        tmp_path / "public", localstack, store.bucket, {"S3_PUBLIC_ENDPOINT_URL": public}
    ):
        upload = clients_view.presign_put(
            "c/a.png", content_type="image/png", content_length=None, expires_in=60
        )
        assert upload.url.startswith(f"{public}/{store.bucket}/c/a.png?")
        response = await http.put(upload.url, content=b"via the public name", headers=upload.headers)
        assert response.status_code == 200, response.text
        download = await http.get(clients_view.presign_get("c/a.png", expires_in=60))
        assert download.content == b"via the public name"


async def test_the_bucket_cors_rule_answers_a_browsers_preflight_for_an_allowed_origin(
    store: ObjectStore, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put("c/a.png", content_type="image/png", content_length=None, expires_in=60)
    response = await http.options(
        upload.url,
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://chat.example"
    assert "PUT" in response.headers["access-control-allow-methods"]


async def test_the_bucket_cors_rule_refuses_another_origin(
    store: ObjectStore, http: httpx.AsyncClient
) -> None:
    upload = store.presign_put("c/a.png", content_type="image/png", content_length=None, expires_in=60)
    response = await http.options(
        upload.url,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    assert "access-control-allow-origin" not in response.headers


async def test_setup_creates_a_bucket_outside_us_east_1_and_is_idempotent(
    tmp_path: Path, localstack: harness.Backend
) -> None:
    env = {"AWS_REGION": "ap-southeast-1", "S3_BUCKET_NAME": unique("apse1")}
    async for store in _store(tmp_path, localstack, env["S3_BUCKET_NAME"], env):  # provisions once
        await harness.provision(
            make_settings(tmp_path, {**env, "OBJECT_STORE": "s3", "AWS_ENDPOINT_URL": localstack.address})
        )
        await store.put("c/a.png", b"x", content_type="image/png")
        assert await store.head("c/a.png") is not None


async def test_ping_fails_for_a_missing_bucket(tmp_path: Path, localstack: harness.Backend) -> None:
    async for store in _store(tmp_path, localstack, unique("missing"), provisioned=False):
        with pytest.raises(Exception, match="404"):
            await store.ping()
