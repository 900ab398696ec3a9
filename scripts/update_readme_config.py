"""Rewrite the configuration table of docs/operations/configuration.md from the settings declarations.

Run by `make docs`; tests/foundation/test_settings.py fails when the page is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chat_core.settings import markdown_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "operations" / "configuration.md"
START, END = "<!-- config:start -->", "<!-- config:end -->"


def render(page: str) -> str:
    head, _, rest = page.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


if __name__ == "__main__":
    text = PAGE.read_text()
    updated = render(text)
    PAGE.write_text(updated)
    name = PAGE.relative_to(PAGE.parents[2])
    sys.stdout.write(f"{name}: configuration table is current\n" if updated == text else f"{name} updated\n")
