#!/usr/bin/env bash
# The lock is current, and every workspace member's imports match the dependencies its own pyproject declares
# (deptry: nothing imported that is undeclared or only there transitively, nothing declared that is unused).
# The shipped code is checked (each member's src/); tests, bench and scripts run in the dev environment.
set -euo pipefail
cd "$(dirname "$0")/.."
uv lock --check
status=0
for member in . libs/* services/* tools/*; do
  [ -f "$member/pyproject.toml" ] && [ -d "$member/src" ] || continue
  echo "deptry: $member"
  uv run --frozen --no-sync deptry "$member/src" --config "$member/pyproject.toml" --no-ansi || status=1
done
exit "$status"
