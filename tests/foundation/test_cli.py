"""The `chat-management` command: dev tokens and the configuration table."""

from __future__ import annotations

import os
import subprocess
import sys

from chat_core.auth import HS256Verifier
from tests.conftest import TEST_SECRET


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_management", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_token_mints_a_token_the_services_accept() -> None:
    result = _cli("token", "--user", "alice", env={"AUTH_JWT_SECRET": TEST_SECRET})
    assert result.returncode == 0, result.stderr
    principal = await HS256Verifier(TEST_SECRET).verify(result.stdout.strip())
    assert principal.user_id == "alice"


def test_token_refuses_a_user_id_that_cannot_be_a_key_segment() -> None:
    for user in ("../etc", "a..b", "a/b"):
        result = _cli("token", "--user", user, env={"AUTH_JWT_SECRET": TEST_SECRET})
        assert result.returncode == 2, user


def test_config_prints_a_markdown_table_of_every_variable() -> None:
    result = _cli("config", env={"AUTH_JWT_SECRET": TEST_SECRET})
    assert result.returncode == 0
    assert "| `S3_BUCKET_NAME` |" in result.stdout
    assert "| `AWS_REGION` | `us-east-1` |" in result.stdout
