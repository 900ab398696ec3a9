"""Rewrite the README's configuration table from the settings declarations (`make docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

from chat_core.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config:start -->", "<!-- config:end -->"


def render(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


if __name__ == "__main__":
    text = README.read_text()
    updated = render(text)
    README.write_text(updated)
    sys.stdout.write("README configuration table is current\n" if updated == text else "README updated\n")
