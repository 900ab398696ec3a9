"""The layers of docs/architecture.md ("Layers a tool checks") are import-linter contracts that hold."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.harness import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# Who may import the composition root: the app factory, each service's app module (its ``ports(root)``),
# the cleanup job's entry point, the command and the all-in-one process. Nothing a service builds holds it.
MAY_IMPORT_THE_ROOT = {
    "chat_core.app_factory",
    "upload_service.app",
    "upload_service.cleanup",
    "message_service.app",
    "image_proxy.app",
    "notification_consumer.app",
    "media_processor.app",
}


def test_every_contract_is_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


def test_no_contract_has_an_exception() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ignored = [line for contract in config["contracts"] for line in contract.get("ignore_imports", [])]
    assert ignored == [], "an exception to a layer: fix the import instead of listing it"


def test_only_the_composing_modules_import_the_composition_root() -> None:
    import grimp

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
    graph = grimp.build_graph(*packages, cache_dir=None)
    importers = graph.find_modules_that_directly_import("chat_core.composition")
    assert {m for m in importers if not m.startswith("chat_management")} <= MAY_IMPORT_THE_ROOT


def test_each_service_build_takes_its_ports_not_the_root() -> None:
    import typing

    from chat_management import all as all_in_one

    for name, module in all_in_one.SERVICES.items():
        hints = typing.get_type_hints(module.build)
        ports = hints["ports"]
        assert ports.__module__ == f"{module.__name__.rpartition('.')[0]}.ports", name
        assert "Composition" not in {getattr(hint, "__name__", "") for hint in hints.values()}, name


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
    assert "cycles (strongly connected groups of modules): 0" in lines
    assert "arrows running back up to chat_core.composition (it imports them, they import it): 0" in lines
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
