"""The layers of docs/architecture.md ("Layers a tool checks") are import-linter contracts that hold."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.harness import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# What the composition root removes: adapters reaching back up to the locator, and one module pair.
KNOWN_DEBT_TARGETS = {"chat_core.backends", "chat_core.objectstore.local"}


def test_every_contract_is_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


def test_the_only_exceptions_are_todays_arrows_back_up() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ignored = {line for contract in config["contracts"] for line in contract.get("ignore_imports", [])}
    assert {line.split(" -> ")[1] for line in ignored} <= KNOWN_DEBT_TARGETS
    assert len(ignored) <= 19, "a new exception: fix the import instead of listing it"


def test_the_graph_script_finds_a_cycle_and_the_arrows_back_up() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/import_graph.py", "--top", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert any(line.startswith("cycles (strongly connected groups of modules): ") for line in lines)
    assert any(line.startswith("arrows running back up to chat_core.backends") for line in lines)
    assert len(lines[lines.index("largest files (lines):") + 1 :]) == 3


def test_tarjan_finds_exactly_the_cycles_of_a_known_graph() -> None:
    import grimp

    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None
    assert spec.loader is not None
    import_graph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(import_graph)
    graph = grimp.ImportGraph()
    for importer, imported in [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
        ("f", "a"),
    ]:
        graph.add_import(importer=importer, imported=imported)
    assert import_graph.strongly_connected(graph) == [["a", "b", "c"], ["d", "e"]]
