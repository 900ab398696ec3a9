"""``chat-management smoke`` (the chart's ``helm test``) walks upload -> send -> proxy against the
all-in-one app on a real uvicorn: embedded adapters, and S3 on LocalStack + the Firestore emulator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from chat_core.auth import mint_token
from chat_core.composition import Composition
from chat_management import all as all_in_one
from chat_management import smoke
from tests import harness
from tests.conftest import TEST_SECRET, make_settings, unique

WALK = [
    "create_conversation", "upload_url", "upload", "send_image_message", "image_ready",
    "fetch_image_as_sender",
]  # fmt: skip


def _cloud_env(request: pytest.FixtureRequest) -> dict[str, str]:
    localstack: harness.Backend = request.getfixturevalue("localstack")
    emulator: harness.Backend = request.getfixturevalue("firestore_emulator")
    return {
        "OBJECT_STORE": "s3",
        "S3_BUCKET_NAME": unique("smoke"),
        "AWS_ENDPOINT_URL": localstack.address,
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_EMULATOR_HOST": emulator.address,
        "FIRESTORE_PROJECT_ID": request.getfixturevalue("firestore_project"),
    }


@pytest.fixture(
    params=["embedded", pytest.param("cloud", marks=[pytest.mark.localstack, pytest.mark.firestore])]
)
def stack_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return {} if request.param == "embedded" else _cloud_env(request)


async def start(tmp_path: Path, serve: Any, env: Mapping[str, str]) -> str:
    port = harness.free_port()
    # Short polls: the consumer's shutdown waits for its in-flight receive (10 s by default).
    fast = {
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SHUTDOWN_DRAIN_SECONDS": "0.2",
        "SQS_WAIT_SECONDS": "1",
    }
    settings = make_settings(tmp_path, {**fast, **env})
    backends = Composition(settings)
    app = all_in_one.create_app(settings, backends)
    if not any(route.path == "/conversations" for route in app.routes):
        pytest.skip("the message service's routes are not in this build yet")
    base_url = str(await serve(app, port))
    await harness.provision(settings)
    return base_url


def targets(base_url: str, **overrides: str) -> smoke.SmokeTargets:
    return smoke.SmokeTargets(
        upload_url=overrides.get("upload_url", base_url),
        message_url=overrides.get("message_url", base_url),
        proxy_url=overrides.get("proxy_url", base_url),
        token=mint_token(TEST_SECRET, "smoke-sender"),
        peer_token=mint_token(TEST_SECRET, "smoke-member"),
        peer_id="smoke-member",
        stranger_token=mint_token(TEST_SECRET, "smoke-stranger"),
    )


def test_png_is_a_real_png_of_the_declared_size() -> None:
    import io

    from PIL import Image  # a dev dependency: the smoke command itself must not need it

    with Image.open(io.BytesIO(smoke.png(7, 5))) as image:
        image.verify()
        assert (image.format, image.size) == ("PNG", (7, 5))


@pytest.mark.parametrize("mode", ["redirect", "stream"])
async def test_smoke_walks_upload_send_and_proxy(
    tmp_path: Path, serve: Any, stack_env: dict[str, str], mode: str
) -> None:
    base_url = await start(tmp_path, serve, {"IMAGE_PROXY_MODE": mode, **stack_env})
    walk = targets(base_url)

    await smoke.walk(walk)

    assert [step["step"] for step in walk.steps] == [*WALK, "fetch_image_as_member", "refuse_stranger"]
    assert all(step["ok"] for step in walk.steps)
    fetched = [step for step in walk.steps if step["step"].startswith("fetch_image")]
    assert all(step.get("redirected", False) == (mode == "redirect") for step in fetched)


async def test_smoke_fails_when_image_requests_reach_the_wrong_service(tmp_path: Path, serve: Any) -> None:
    base_url = await start(tmp_path, serve, {})
    walk = targets(base_url, proxy_url=f"{base_url}/wrong-prefix")

    with pytest.raises(smoke.SmokeFailed, match="404"):
        await smoke.walk(walk)

    assert walk.steps[-1]["step"] == "fetch_image_as_sender"
    assert walk.steps[-1]["ok"] is False


async def _cli(*args: str, env: Mapping[str, str]) -> tuple[int, list[dict[str, Any]]]:
    # The app under test runs in this event loop: the command must not block it.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat_management", "smoke", *args,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return process.returncode, lines or [{"stderr": stderr.decode()}]


async def test_smoke_command_passes_against_a_healthy_deployment(tmp_path: Path, serve: Any) -> None:
    base_url = await start(tmp_path, serve, {})

    code, lines = await _cli("--base-url", base_url, env={"AUTH_JWT_SECRET": TEST_SECRET})

    assert code == 0, lines
    assert lines[-1] == {"smoke": "passed", "steps": len(WALK) + 2}


async def test_smoke_command_exits_1_and_says_which_step_failed(tmp_path: Path, serve: Any) -> None:
    base_url = await start(tmp_path, serve, {})

    nowhere = f"http://127.0.0.1:{harness.free_port()}"
    code, lines = await _cli(
        "--upload-url", nowhere, "--message-url", base_url, "--proxy-url", base_url,
        env={"AUTH_JWT_SECRET": TEST_SECRET},
    )  # fmt: skip

    assert code == 1
    assert lines[-2]["step"] == "upload_url"
    assert lines[-2]["ok"] is False
    assert lines[-1]["smoke"] == "failed"


async def test_smoke_asks_every_components_readiness_first(tmp_path: Path, serve: Any) -> None:
    base_url = await start(tmp_path, serve, {})
    nowhere = f"http://127.0.0.1:{harness.free_port()}"

    code, lines = await _cli("--ready", f"upload={base_url}", "--ready-only", env={})
    assert code == 0, lines
    assert lines[0] == {"step": "readyz:upload", "status": 200, "ok": True, "ms": lines[0]["ms"]}

    code, lines = await _cli(
        "--ready", f"upload={base_url}", "--ready", f"media-processor={nowhere}", "--ready-only", env={}
    )
    assert code == 1
    assert lines[-2]["step"] == "readyz:media-processor"
    assert lines[-2]["ok"] is False


def test_smoke_command_needs_somewhere_to_go() -> None:
    from chat_management.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["smoke", "--upload-url", "http://x"])
    assert exit_info.value.code == 2
