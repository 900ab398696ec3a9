"""One JSON file for a whole ``make bench`` run: every module adds its rows with one call.

    from bench import results
    results.record("sockets", {"sockets": 10_000, "kib_per_socket": 37.0})

Rows go to ``bench/results/latest.json`` (gitignored; ``BENCH_RESULTS`` names another file), grouped by
section, each row a flat JSON object stamped with the time it was recorded. ``make bench`` starts a fresh
file (``python -m bench.results --new``: the previous run is kept as ``previous.json``) and ends with
``python -m bench.plots``, which draws the SVG plots from it. A module run on its own adds to the current
file (a row recorded again under the same ``key`` replaces the older one), so rerunning one row of a run
and redrawing is ``python -m bench.<module> && python -m bench.plots``.

Writes take an exclusive ``flock`` and replace the file atomically: two benchmarks recording at once
never lose each other's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["load", "path", "record", "rows", "start"]

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def path() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", str(DEFAULT)))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "note": "shared machine: compare ratios within one run, not figures across runs",
    }


def _empty() -> dict[str, Any]:
    return {"started": _now(), "machine": _machine(), "sections": {}}


@contextlib.contextmanager
def _locked() -> Iterator[dict[str, Any]]:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read(target)
        yield data
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        temporary.replace(target)


def _read(target: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(target.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return _empty()
    data.setdefault("sections", {})
    return data


def record(section: str, row: Mapping[str, Any], *, key: tuple[str, ...] = ()) -> None:
    """Add ``row`` to ``section``; with ``key`` (field names), the row with the same values is replaced."""
    entry = {**row, "recorded": _now()}
    with _locked() as data:
        existing: list[dict[str, Any]] = data["sections"].setdefault(section, [])
        if key:
            same = tuple(entry.get(name) for name in key)
            existing[:] = [old for old in existing if tuple(old.get(name) for name in key) != same]
        existing.append(entry)


def load() -> dict[str, Any]:
    return _read(path())


def rows(section: str, data: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    sections: Mapping[str, Any] = (data if data is not None else load()).get("sections", {})
    return list(sections.get(section, []))


def start() -> Path:
    """A fresh results file (the last one kept as ``previous.json`` beside it)."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.replace(target.with_name("previous.json"))
    target.write_text(json.dumps(_empty(), indent=1) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new", action="store_true", help="start a fresh results file")
    args = parser.parse_args()
    if args.new:
        print(f"bench results: {start()}")
    else:
        print(json.dumps(load(), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
