"""``chat-management setup``: creates the bucket with its browser-upload CORS rule, idempotently.

The rest of the hardened bucket: ``test_bucket_setup.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chat_core.composition import Composition
from tests import harness
from tests.conftest import TEST_SECRET, make_settings, unique


def _setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_management", "setup"],
        env={**os.environ, "AUTH_JWT_SECRET": TEST_SECRET, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.localstack
async def test_setup_creates_the_bucket_with_its_cors_rule_and_can_run_again(
    localstack: harness.Backend, tmp_path: Path
) -> None:
    env = {
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": unique("setup"),
        "MEDIA_QUEUE_NAME": unique("setup-media"),
        "AWS_ENDPOINT_URL": localstack.address,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "CORS_ALLOW_ORIGINS": "https://chat.example",
        "DATA_DIR": str(tmp_path),
    }
    first, again = _setup(env), _setup(env)
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "ok: object store (s3)" in again.stdout
    backends = Composition(make_settings(tmp_path, env))
    store = backends.object_store
    async with backends, httpx.AsyncClient() as http:
        await store.ping()
        upload = store.presign_put("c/a.png", content_type="image/png", content_length=None, expires_in=60)
        preflight = await http.options(
            upload.url,
            headers={"Origin": "https://chat.example", "Access-Control-Request-Method": "PUT"},
        )
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example"


def test_setup_prepares_the_local_store(tmp_path: Path) -> None:
    result = _setup({"OBJECT_STORE": "local", "DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "objects").is_dir()


def test_setup_fails_with_one_line_when_the_store_is_unreachable(tmp_path: Path) -> None:
    result = _setup(
        {
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": "nowhere",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "DATA_DIR": str(tmp_path),
        }
    )
    assert result.returncode == 1
    assert result.stderr.startswith("failed: object store (s3)")
