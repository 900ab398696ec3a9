"""Every part of `make bench` runs to its end in its quick mode (a fresh clone's defaults, the stacks the
benchmark starts itself): a module that dies, or a row that fails its guard (BENCH FAILED), fails here.

Figures are not checked (performance is measured only in `make bench`); only that the run completes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

QUICK_RUNS = {
    "presign": [sys.executable, "scripts/bench_presign.py", "--calls", "500"],
    "http": [sys.executable, "-m", "bench.http", "--quick"],
    "limiter": [sys.executable, "-m", "bench.limiter", "--quick"],
    "consumer": [sys.executable, "scripts/bench_consumer.py", "--queue", "sqlite", "--notifications", "200"],
    "media": [sys.executable, "-m", "bench.media", "--quick"],
    "media_pipeline": [sys.executable, "-m", "bench.media_pipeline", "--quick"],
    "sockets": [sys.executable, "-m", "bench.sockets", "--quick", "--redis", "standalone"],
    "socket_memory": [sys.executable, "-m", "bench.socket_memory", "--quick"],
    "pods": [sys.executable, "-m", "bench.pods", "--quick"],
    "firestore_model": [sys.executable, "-m", "bench.firestore_model", "--messages", "30"],
}


@pytest.mark.e2e
@pytest.mark.parametrize("part", QUICK_RUNS)
def test_quick_mode_runs_to_the_end(part: str) -> None:
    if part == "http" and shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install -y wrk; make bench installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        QUICK_RUNS[part], cwd=ROOT, capture_output=True, text=True, timeout=420, check=False
    )
    output = done.stdout + done.stderr
    assert "BENCH FAILED" not in output, output[-3000:]
    assert done.returncode == 0, output[-3000:]
