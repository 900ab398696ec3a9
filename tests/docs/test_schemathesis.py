"""Schemathesis fuzzes the OpenAPI document of the all-in-one process (the union of the four services'
documents) against ``chat-management serve all`` under uvicorn on a free port, with a bounded budget:
no 5xx, and every answer is one the document lists, with the documented content type, schema and headers
(``Allow`` on 405 and OPTIONS included). Examples, coverage, fuzzing and stateful phases all run.

One check is left out: ``positive_data_acceptance`` (a request the schema allows must get a 2xx). Some
rules are semantic, not schema: a cursor must be one this server issued, a text message needs text, an
upload's type must be one ``ALLOWED_IMAGE_TYPES`` names (415), a participant must not be the caller. Each
such refusal is a documented 4xx with problem details, which the other checks verify.

Each service's own document is checked to be the all-in-one document's operations on its paths, so the
fuzzed document speaks for all four.
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

MAX_EXAMPLES = 25  # per operation and phase: a few hundred cases in all, well under a minute here


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = harness.free_port()
    env = {
        **os.environ,
        "AUTH_JWT_SECRET": TEST_SECRET,
        "DATA_DIR": str(tmp_path / "data"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        "SHUTDOWN_DRAIN_SECONDS": "0.2",
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


def test_the_openapi_document_is_the_truth(server: str, tmp_path: Path) -> None:
    token = mint_token(TEST_SECRET, "fuzzer", ttl_seconds=600)
    started = time.monotonic()
    result = subprocess.run(
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
            "positive_data_acceptance,ensure_resource_availability",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20261130",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "-H",
            f"Authorization: Bearer {token}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # its cache (.schemathesis/) stays out of the work tree
    )
    elapsed = time.monotonic() - started
    summary = [line for line in result.stdout.splitlines() if "generated" in line or "passed" in line]
    print(f"schemathesis: {' | '.join(summary)} in {elapsed:.1f} s")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


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
