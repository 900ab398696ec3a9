"""Hardening around the edges: security headers on stored bytes, start-up refusals, failure answers.

- ``/_storage`` byte responses carry ``nosniff``, a CSP that forbids everything, and a safe
  ``Content-Disposition`` (inline for images, attachment for anything else);
- the published dev secret is refused off loopback or next to a production-like setting; ``make run``
  binds 127.0.0.1; a short or empty URL-signing key file is refused at start-up;
- a failing JWKS is not asked again on every request (cool-down with backoff) and cached keys keep working;
- every 503 is a problem with ``Retry-After``: object store unreachable, signing keys unavailable, message
  store locked (SQLite) or unreachable (Firestore).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from chat_core import keys
from chat_core.auth import JwksVerifier
from chat_core.composition import Composition
from chat_core.errors import ProblemError
from chat_core.objectstore.local import SIGNING_KEY_FILE, LocalObjectStore, SigningKeyError
from chat_core.objectstore.serving import BYTES_CSP
from chat_core.server import refuse_unset_endpoints
from chat_core.settings import SettingsError, refuse_dev_secret
from chat_management.all import create_app
from tests import harness
from tests.conftest import TEST_SECRET, auth_header, make_settings
from tests.jwks_server import JwksServer

ROOT = Path(__file__).resolve().parents[2]
DEV_SECRET = "dev-only-secret-change-me-0123456789abcdef"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


# --- /_storage headers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content_type", "disposition"),
    [
        ("image/jpeg", "inline"),
        ("image/png", "inline"),
        ("text/html", "attachment"),
        ("image/svg+xml", "attachment"),
    ],
)
async def test_storage_bytes_carry_nosniff_csp_and_a_safe_disposition(
    client_for: Any, tmp_path: Path, content_type: str, disposition: str
) -> None:
    settings = make_settings(tmp_path)
    backends = Composition(settings)
    http = await client_for(create_app(settings, backends))
    key = f"uploads/room/images/alice/20260101-000000-{'0' * 8}-0000-0000-0000-{'0' * 12}.jpg"
    await backends.object_store.put(key, JPEG, content_type=content_type)
    url = backends.object_store.presign_get(key, expires_in=60)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    for extra in ({}, {"Range": "bytes=0-3"}):
        response = await http.get(path, headers=extra)
        assert response.status_code in (200, 206), response.text
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == BYTES_CSP
        assert response.headers["content-disposition"] == (
            f'{disposition}; filename="20260101-000000-00000000-0000-0000-0000-000000000000.jpg"'
        )
    etag = response.headers["etag"]
    not_modified = await http.get(path, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["content-security-policy"] == BYTES_CSP


# --- start-up refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "env"),
    [
        ("0.0.0.0", {}),
        ("::", {}),
        ("192.168.1.5", {}),
        ("127.0.0.1", {"PUBLIC_BASE_URL": "https://chat.example.com"}),
        ("127.0.0.1", {"OBJECT_STORE": "s3", "S3_BUCKET_NAME": "b", "AWS_ENDPOINT_URL": ""}),
        ("127.0.0.1", {"MESSAGE_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": ""}),
    ],
)
def test_the_dev_secret_is_refused_off_loopback_or_with_production_settings(
    tmp_path: Path, host: str, env: dict[str, str]
) -> None:
    settings = make_settings(tmp_path, {"AUTH_JWT_SECRET": DEV_SECRET, **env})
    with pytest.raises(SettingsError, match="AUTH_JWT_SECRET"):
        refuse_dev_secret(settings, host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_the_dev_secret_is_fine_on_loopback(tmp_path: Path, host: str) -> None:
    refuse_dev_secret(make_settings(tmp_path, {"AUTH_JWT_SECRET": DEV_SECRET}), host)
    refuse_dev_secret(make_settings(tmp_path), "0.0.0.0")  # any other secret binds anywhere


def test_serving_with_the_dev_secret_on_all_interfaces_exits_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "AUTH_JWT_SECRET": DEV_SECRET, "HOST": "0.0.0.0", "DATA_DIR": str(tmp_path)}
    env["PORT"] = str(harness.free_port())
    done = subprocess.run(
        [sys.executable, "-m", "chat_management", "serve", "all"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("configuration error: AUTH_JWT_SECRET"), lines


def test_serving_off_loopback_with_a_backends_address_left_to_its_default_exits_naming_it(
    tmp_path: Path,
) -> None:
    """The chart's `default` profile set no REDIS_URL: the pods used redis://127.0.0.1 and never got Ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "FIRESTORE_"))}
    env |= {
        "AUTH_JWT_SECRET": TEST_SECRET,
        "HOST": "0.0.0.0",
        "DATA_DIR": str(tmp_path),
        "EVENT_BUS": "redis",
    }
    env |= {"PORT": str(harness.free_port()), "MESSAGE_STORE": "firestore", "LIMIT_STORE": "redis"}
    done = subprocess.run(
        [sys.executable, "-m", "chat_management", "serve", "message"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "configuration error: REDIS_URL (with EVENT_BUS=redis and LIMIT_STORE=redis), "
        "FIRESTORE_PROJECT_ID (with MESSAGE_STORE=firestore): required when binding 0.0.0.0"
    ), line


def test_a_backends_address_set_explicitly_is_taken_as_meant_even_local(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"EVENT_BUS": "redis"})
    refuse_unset_endpoints(settings, "0.0.0.0", {"REDIS_URL": "redis://127.0.0.1:6379/0"})  # one machine
    refuse_unset_endpoints(settings, "127.0.0.1", {})  # a laptop: the defaults are what it runs
    refuse_unset_endpoints(make_settings(tmp_path), "0.0.0.0", {})  # embedded: nothing to point at
    with pytest.raises(SettingsError, match=r"^REDIS_URL"):
        refuse_unset_endpoints(settings, "0.0.0.0", {})


def test_make_run_binds_loopback_by_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HOST"}
    shown = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval=show-host: ; @echo $(HOST)", "show-host"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout.strip() == "127.0.0.1"


@pytest.mark.parametrize("content", [b"", b"\n", base64.b64encode(b"k" * 31) + b"\n", b"not base64!"])
async def test_a_short_or_empty_signing_key_file_is_refused_at_start_up(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / SIGNING_KEY_FILE).write_bytes(content)
    store = LocalObjectStore(make_settings(tmp_path))
    with pytest.raises(SigningKeyError, match="URL-signing key"):
        await store.start()


async def test_a_32_byte_signing_key_file_is_used(tmp_path: Path) -> None:
    (tmp_path / SIGNING_KEY_FILE).write_bytes(base64.b64encode(b"k" * 32) + b"\n")
    store = LocalObjectStore(make_settings(tmp_path))
    await store.start()
    assert store.presign_get("a/b.jpg", expires_in=60).startswith("http")


# --- JWKS outage ------------------------------------------------------------------------------------
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(kid: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    return {**data, "kid": kid, "use": "sig"}


def _token(kid: str = "k1") -> str:
    now = int(time.time())
    claims = {"sub": "alice", "iss": "https://idp.test", "aud": "chat", "iat": now, "exp": now + 600}
    return jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [_jwk("k1")]
    with server.running():
        yield server


async def test_a_failing_jwks_is_not_asked_on_every_request(jwks: JwksServer) -> None:
    verifier = JwksVerifier(jwks.url, issuer="https://idp.test", audience="chat", min_refresh_interval=0.3)
    jwks.status = 500
    attempts = 0
    for n in range(20):
        with pytest.raises(ProblemError) as refused:
            await verifier.verify(_token())
        assert (refused.value.status, refused.value.code) == (503, "auth_keys_unavailable")
        assert int(refused.value.headers["Retry-After"]) >= 1
        if n == 0:
            attempts = jwks.requests  # one refresh (with its own bounded retries), then the cool-down
    assert 1 <= attempts <= 5
    assert jwks.requests == attempts
    time.sleep(0.35)
    jwks.status = 200
    assert (await verifier.verify(_token())).user_id == "alice"  # the cool-down ended: refreshed
    assert jwks.requests == attempts + 1


async def test_cached_keys_keep_working_while_the_jwks_is_down(jwks: JwksServer) -> None:
    verifier = JwksVerifier(
        jwks.url, issuer="https://idp.test", audience="chat", cache_seconds=0, min_refresh_interval=0.3
    )
    assert (await verifier.verify(_token())).user_id == "alice"
    jwks.status = 503
    time.sleep(0.35)  # past the minimum refresh interval: the next stale lookup asks the IdP once
    before = jwks.requests
    assert (await verifier.verify(_token())).user_id == "alice"
    attempts = jwks.requests - before  # one refresh (with its own bounded retries), then the cool-down
    for _ in range(20):  # keys are stale (cache_seconds=0): each would refresh, but the cool-down holds
        assert (await verifier.verify(_token())).user_id == "alice"
    assert 1 <= attempts <= 5
    assert jwks.requests - before == attempts


async def test_signing_keys_unavailable_is_a_503_problem_with_retry_after(
    client_for: Any, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{harness.free_port()}/jwks.json"
    env = {
        "AUTH_JWT_SECRET": "",
        "AUTH_JWKS_URL": down,
        "AUTH_ISSUER": "https://idp.test",
        "AUTH_AUDIENCE": "chat",
    }
    http = await client_for(create_app(make_settings(tmp_path, env)))
    response = await http.get("/conversations", headers={"Authorization": f"Bearer {_token()}"})
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "auth_keys_unavailable"
    assert int(response.headers["retry-after"]) >= 1


# --- object store unreachable -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["redirect", "stream"])
async def test_an_unreachable_object_store_makes_a_send_503_storage_unavailable_with_retry_after(
    client_for: Any, tmp_path: Path, mode: str
) -> None:
    env = {
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": "unreachable",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}",
        "IMAGE_PROXY_MODE": mode,
    }
    http = await client_for(create_app(make_settings(tmp_path, env)))
    created = await http.post("/conversations", json={"participantIds": []}, headers=auth_header("alice"))
    cid = created.json()["conversationId"]
    object_key = keys.new_object_key("alice", "image/jpeg")
    # The proxy serves derivatives of sent images only: it asks the message store first, so an image that
    # was never sent is 404 without the (unreachable) bucket being asked.
    viewed = await http.get(f"/images/{cid}/{object_key}", headers=auth_header("alice"))
    assert viewed.status_code == 404, viewed.text
    assert viewed.json()["code"] == "image_not_found"
    sent = await http.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "image", "metadata": {"object_key": object_key, "content_type": "image/jpeg"}},
        headers=auth_header("alice"),
    )
    assert sent.status_code == 503, sent.text
    assert sent.json()["code"] == "storage_unavailable"
    assert int(sent.headers["retry-after"]) >= 1
    assert httpx.codes.is_server_error(sent.status_code)


# --- message store unavailable ----------------------------------------------------------------------
def _assert_503(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert int(response.headers["retry-after"]) >= 1


_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


async def test_a_sqlite_store_locked_by_another_process_makes_writes_503_store_unavailable(
    client_for: Any, tmp_path: Path
) -> None:
    """Several processes may share one SQLite file: one holding the write lock past busy_timeout is an
    outage of the store for the others' writes (503 with Retry-After, never a 500); reads go on (WAL)."""
    http = await client_for(create_app(make_settings(tmp_path, {"REQUEST_TIMEOUT_SECONDS": "60"})))
    created = await http.post(
        "/conversations", json={"participantIds": ["bob"]}, headers=auth_header("alice")
    )
    cid = created.json()["conversationId"]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(tmp_path / "messages.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        sent, listed, upload = await asyncio.gather(
            http.post(
                f"/conversations/{cid}/messages",
                json={"messageType": "text", "content": "hi"},
                headers=auth_header("alice"),
            ),
            http.get(f"/conversations/{cid}/messages", headers=auth_header("bob")),
            http.post(
                f"/conversations/{cid}/images/upload_url",
                json={"content_type": "image/jpeg"},
                headers=auth_header("alice"),
            ),
        )
    finally:
        holder.communicate("")
    _assert_503(sent, "store_unavailable")
    assert listed.status_code == 200, listed.text
    assert upload.status_code == 200, upload.text
    # The lock is gone: the same send goes through.
    again = await http.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "text", "content": "hi"},
        headers=auth_header("alice"),
    )
    assert again.status_code == 201, again.text


@pytest.mark.firestore
async def test_an_unreachable_firestore_makes_plain_requests_503_with_retry_after(
    client_for: Any, tmp_path: Path
) -> None:
    """The client keeps retrying a closed port on its own; the request deadline answers for it."""
    env = {
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_PROJECT_ID": "unreachable",
        "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{harness.free_port()}",
        "REQUEST_TIMEOUT_SECONDS": "2",
    }
    http = await client_for(create_app(make_settings(tmp_path, env)))
    listed, sent, upload, conversations = await asyncio.gather(
        http.get("/conversations/c-1/messages", headers=auth_header("alice")),
        http.post(
            "/conversations/c-1/messages",
            json={"messageType": "text", "content": "hi"},
            headers=auth_header("alice"),
        ),
        http.post(
            "/conversations/c-1/images/upload_url",
            json={"content_type": "image/jpeg"},
            headers=auth_header("alice"),
        ),
        http.get("/conversations", headers=auth_header("alice")),
    )
    for response in (listed, sent, upload, conversations):
        _assert_503(response, "backend_timeout")
