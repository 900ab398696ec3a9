"""The gcloud commands that apply ``firestore.indexes.json`` to a Firestore database (Terraform-free).

    python scripts/firestore_indexes.py --project my-project [--database '(default)'] [--apply]

Prints one command per composite index, per single-field exemption and per TTL policy, in the file's
order; ``--apply`` runs them (gcloud must be logged in). The Firebase CLI reads the same file directly
(``firebase deploy --only firestore:indexes``). Re-running is safe: an index that exists is reported as
such by gcloud and left alone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

INDEXES = Path(__file__).resolve().parents[1] / "firestore.indexes.json"


def commands(data: dict[str, Any], project: str, database: str) -> list[list[str]]:
    scope = [f"--project={project}", f"--database={database}"]
    out: list[list[str]] = []
    for index in data["indexes"]:
        fields = []
        for spec in index["fields"]:
            how = (
                f"array-config={spec['arrayConfig'].lower()}"
                if "arrayConfig" in spec
                else f"order={spec['order'].lower()}"
            )
            fields.append(f"--field-config=field-path={spec['fieldPath']},{how}")
        out.append(
            [
                "gcloud",
                "firestore",
                "indexes",
                "composite",
                "create",
                f"--collection-group={index['collectionGroup']}",
                f"--query-scope={index['queryScope'].lower()}",
                *fields,
                *scope,
            ]
        )
    for override in data["fieldOverrides"]:
        group, field = override["collectionGroup"], override["fieldPath"]
        if override.get("indexes") == []:
            out.append(
                [
                    "gcloud",
                    "firestore",
                    "indexes",
                    "fields",
                    "update",
                    field,
                    f"--collection-group={group}",
                    "--disable-indexes",
                    *scope,
                ]
            )
        if override.get("ttl"):
            out.append(
                [
                    "gcloud",
                    "firestore",
                    "fields",
                    "ttls",
                    "update",
                    field,
                    f"--collection-group={group}",
                    "--enable-ttl",
                    *scope,
                ]
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--database", default="(default)")
    parser.add_argument("--apply", action="store_true", help="run the commands instead of printing them")
    args = parser.parse_args(argv)
    for command in commands(json.loads(INDEXES.read_text()), args.project, args.database):
        print(shlex.join(command))
        if args.apply:
            subprocess.run([*command, "--quiet"], check=False)  # noqa: S603 - gcloud, arguments from our file
    return 0


if __name__ == "__main__":
    sys.exit(main())
