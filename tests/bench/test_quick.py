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
    "layers": [sys.executable, "-m", "bench.layers", "--quick"],
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
def test_quick_mode_runs_to_the_end(part: str, tmp_path: Path) -> None:
    if part == "http" and shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install -y wrk; make bench installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path / "results.json")}  # not the checkout's run
    done = subprocess.run(
        QUICK_RUNS[part], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420, check=False
    )
    output = done.stdout + done.stderr
    assert "BENCH FAILED" not in output, output[-3000:]
    assert done.returncode == 0, output[-3000:]


def test_the_plots_are_drawn_from_a_runs_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench.plots`` draws each plot whose section a run holds and skips the others; a row recorded again
    under its key replaces the older one."""
    from bench import plots, results

    assert plots.draw_all({"sections": {}}, tmp_path / "none") == []
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results.json"))
    results.start()
    row = {"stack": "embedded", "route": "proxy 302", "layer": "audit line"}
    results.record("layers", {**row, "cpu_us": 40.0}, key=("stack", "route", "layer"))
    results.record("layers", {**row, "cpu_us": 30.0}, key=("stack", "route", "layer"))
    loaded = results.load()
    assert [entry["cpu_us"] for entry in results.rows("layers", loaded)] == [30.0]
    written = plots.draw_all(loaded, tmp_path / "plots")
    assert [path.name for path in written] == ["layers.svg"]
    assert "audit line" in written[0].read_text()
