"""Keep the chart's ``values.schema.json`` in step with the settings (``make docs`` runs this).

``config`` of the chart accepts exactly the variables of ``chat_core/settings/``: a typo is refused at
``helm install`` instead of being silently ignored by the services. This rewrites that list from the
settings declarations; ``--check`` exits 1 when the file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from chat_core.settings import iter_env_vars

SCHEMA = Path(__file__).resolve().parent / "helm" / "chat-management" / "values.schema.json"
SCALAR = ["string", "number", "boolean"]
# Settings for a developer's laptop only, which no chart install may set: refused like a typo.
NOT_IN_CHART = frozenset({"DEV_LOGIN"})


def updated(schema: dict[str, Any]) -> dict[str, Any]:
    config = schema["properties"]["config"]
    config["properties"] = {
        name: {"type": SCALAR, "description": meaning}
        for name, _, meaning in iter_env_vars()
        if name not in NOT_IN_CHART
    }
    return schema


def render() -> str:
    return json.dumps(updated(json.loads(SCHEMA.read_text())), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when values.schema.json is stale")
    args = parser.parse_args(argv)
    wanted = render()
    if SCHEMA.read_text() == wanted:
        return 0
    if args.check:
        print(f"stale: {SCHEMA} (run: make docs)", file=sys.stderr)
        return 1
    SCHEMA.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
