"""Schemathesis fuzzes the OpenAPI document of the all-in-one process (the union of the four services'
documents) against ``chat-management serve all`` under uvicorn on a free port, with a bounded budget and
``--checks all``: no 5xx, every answer is one the document lists (status, content type, schema, headers,
``Allow`` on 405), a schema-valid request is never refused as malformed (``positive_data_acceptance``)
and a schema-invalid one never accepted (``negative_data_rejection``). Examples, coverage, fuzzing and the
stateful phase all run, for several seeds at once; the stateful phase follows the document's links
(``chat_core.openapi``) from a new conversation to its messages, read receipts, upload URLs and images.

What each check counts as a refusal or an acceptance is configured (``CONFIG``), and that is the
document's promise (docs/api.md "The OpenAPI document"): a schema-valid request may still be refused
for what it names (403 not yours, 404 not there, 409 taken, 410 expired, 422 the stored image is not
what the request says, 429), never with 400 or 415; a schema-invalid one is refused with a 4xx (413 when
it is too large).

The server's rate limits are raised so the fuzzer is not starved into 429s (the limits have their own
tests). Each service's own document is checked to be the all-in-one document's operations on its paths,
so the fuzzed document speaks for all four.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat_core.auth import mint_token
from chat_management import all as all_in_one
from tests import harness
from tests.conftest import TEST_SECRET, make_settings

MAX_EXAMPLES = 20  # per operation and phase
SEEDS = (20261130, 1, 424242)  # run side by side, each as its own user
RELAXED_LIMITS = {
    f"RATE_LIMIT_{name}": "1000000/minute"
    for name in ("UPLOAD_URLS", "SENDS", "CONVERSATIONS", "PARTICIPANT_CHANGES", "READ_RECEIPTS")
}
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "422", "429"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = harness.free_port()
    env = {
        **os.environ,
        **RELAXED_LIMITS,
        "AUTH_JWT_SECRET": TEST_SECRET,
        "DATA_DIR": str(tmp_path / "data"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        "SHUTDOWN_DRAIN_SECONDS": "0.2",
        "DEV_LOGIN": "true",  # /dev/token is in the document too (no token needed)
    }
    for name in ("OBJECT_STORE", "MESSAGE_STORE", "EVENT_BUS", "NOTIFICATION_QUEUE", "PUSH_PROVIDER"):
        env.pop(name, None)  # embedded adapters
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from chat_management.cli import main; main()", "serve", "all"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        harness.wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=1).status_code == 200, timeout=60, what="serve all"
        )
        yield base
    finally:
        harness.kill_group(process)
        log.close()


def _schemathesis(server: str, seed: int, workdir: Path) -> subprocess.Popen[str]:
    workdir.mkdir()
    (workdir / "schemathesis.toml").write_text(CONFIG)
    token = mint_token(TEST_SECRET, f"fuzzer-{seed}", ttl_seconds=900)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server}/docs/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            # ensure_resource_availability (ST302): a creator may leave the conversation they made
            # (docs/api.md "Membership rules"), after which it is rightly 404 to them.
            "ensure_resource_availability",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(seed),
            "--generation-database",
            "none",
            "--request-timeout",
            "20",
            "-H",
            f"Authorization: Bearer {token}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,  # its config, and its cache (.schemathesis/) out of the work tree
    )


@pytest.mark.timeout(480)
def test_the_openapi_document_is_the_truth(server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    runs = {seed: _schemathesis(server, seed, tmp_path / f"seed-{seed}") for seed in SEEDS}
    try:
        outputs = {seed: run.communicate(timeout=420)[0] for seed, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
    elapsed = time.monotonic() - started
    for seed, output in outputs.items():
        summary = [line.strip() for line in output.splitlines() if "generated" in line or "API Links" in line]
        print(f"schemathesis seed {seed}: {' | '.join(summary)} ({elapsed:.0f} s for all seeds)")
    for seed, run in runs.items():
        assert run.returncode == 0, f"seed {seed}:\n" + outputs[seed][-8000:]
        assert "API Links" in outputs[seed], outputs[seed][-3000:]  # the stateful phase ran


def test_each_service_document_is_part_of_the_fuzzed_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    whole = all_in_one.create_app(settings).openapi_schema.to_schema()["paths"]
    for name, module in all_in_one.SERVICES.items():
        own = module.create_app(settings).openapi_schema.to_schema()["paths"]
        # (the notification consumer has no API of its own beyond health and metrics)
        for path, operations in own.items():
            assert path in whole, (name, path)
            for method, operation in operations.items():
                assert whole[path][method]["responses"] == operation["responses"], (name, path, method)
