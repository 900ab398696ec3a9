"""Write tests/durations.json (seconds per test file) from a `pytest --durations=0` run's output.

`make test` runs the heaviest files first (tests/conftest.py), so that no long file starts last and
leaves the other workers idle at the end. Refresh after adding a slow file:

    uv run pytest -n 3 --dist loadfile --durations=0 -q | tee /tmp/suite.log
    uv run python scripts/test_durations.py /tmp/suite.log
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

LINE = re.compile(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(\S+?)::")
OUT = Path(__file__).resolve().parent.parent / "tests" / "durations.json"


def main(log: str) -> None:
    seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
    for line in Path(log).read_text().splitlines():
        if match := LINE.match(line):
            seconds[match.group(2)] += float(match.group(1))
    heavy = {
        name: round(total, 1) for name, total in sorted(seconds.items(), key=lambda kv: -kv[1]) if total >= 2
    }
    OUT.write_text(json.dumps(heavy, indent=1) + "\n")
    print(f"{OUT}: {len(heavy)} files, {sum(heavy.values()):.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
