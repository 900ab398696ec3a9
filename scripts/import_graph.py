"""The import graph's shape: its cycles, the arrows back up to the composition root, the largest files.

    uv run python scripts/import_graph.py [--runtime-only] [--top N]

Built with grimp (import-linter's own graph), over the same packages as the import-linter contracts in
pyproject.toml. A cycle is a strongly connected component of modules (every module in it reaches every
other); an arrow back up is a module that imports ``chat_core.composition`` while the composition root
(directly or not) imports it: an adapter reaching back up to what builds it. ``--runtime-only`` leaves
out imports under ``if TYPE_CHECKING:``, which Python never runs but mypy and an IDE follow. The numbers
go into docs/architecture.md ("Layers a tool checks") and into the closing note of a change that moves them.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
ROOT_MODULE = "chat_core.composition"


def packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["root_packages"])


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a recursive one would hit Python's limit on a large graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [
            (start, iter(sorted(graph.find_modules_directly_imported_by(start))))
        ]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(iter(children), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components, key=lambda c: (-len(c), c))


def arrows_back_up(graph: grimp.ImportGraph) -> list[str]:
    reached = graph.find_upstream_modules(
        ROOT_MODULE, as_package=False
    )  # what the root imports, at any depth
    return sorted(m for m in graph.find_modules_that_directly_import(ROOT_MODULE) if m in reached)


def largest_files(top: int) -> list[tuple[int, str]]:
    sources = [
        p
        for base in ("src", "libs", "services", "tools")
        for p in (ROOT / base).rglob("*.py")
        if ".venv" not in p.parts
    ]
    sized = [(len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in sources]
    return sorted(sized, reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-only", action="store_true", help="leave out `if TYPE_CHECKING:` imports")
    parser.add_argument("--top", type=int, default=10, help="how many of the largest files to list")
    args = parser.parse_args(argv)
    graph = grimp.build_graph(*packages(), exclude_type_checking_imports=args.runtime_only)
    out = sys.stdout
    kind = "runtime imports only" if args.runtime_only else "all imports, type-checking ones included"
    out.write(f"modules: {len(graph.modules)}, imports between them: {graph.count_imports()} ({kind})\n\n")

    cycles = strongly_connected(graph)
    out.write(f"cycles (strongly connected groups of modules): {len(cycles)}\n")
    for component in cycles:
        out.write(f"  {len(component)} modules: {', '.join(component)}\n")

    back = arrows_back_up(graph)
    out.write(f"\narrows running back up to {ROOT_MODULE} (it imports them, they import it): {len(back)}\n")
    for module in back:
        out.write(f"  {module} -> {ROOT_MODULE}\n")

    out.write("\nlargest files (lines):\n")
    for lines, name in largest_files(args.top):
        out.write(f"  {lines:5d}  {name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
