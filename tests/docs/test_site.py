"""The documentation: a short README, a site that builds with broken links failing it, and nothing that
points outside the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.harness import ROOT

DOCS = ROOT / "docs"
# Markdown links and images with a relative target: [text](target) / ![alt](target), anchors stripped.
LINK = re.compile(r"!?\[[^\]]*\]\((?!https?://|mailto:|#)([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_every_link_in_it_resolves() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    targets = LINK.findall(readme)
    assert "docs/index.md" in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def _nav_pages(entries: list[object]) -> set[str]:
    pages: set[str] = set()
    for entry in entries:
        if isinstance(entry, str):
            pages.add(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages |= _nav_pages(value) if isinstance(value, list) else {str(value)}
    return pages


def test_the_nav_lists_every_page() -> None:
    # mkdocs.yml carries a python tag for the mermaid fence: read it as plain YAML, tags ignored.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_args: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)  # noqa: S506 (a SafeLoader)
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert _nav_pages(config["nav"]) == pages


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`, as `make lint` runs it: a broken link, a missing anchor or a page left out of
    the nav fails it. The second build proves the check bites: one broken link in a copy of the site."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # Never --quiet: it silences the very warnings --strict counts, and the build passes whatever breaks.
    build = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    good = subprocess.run(
        [*build, "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert good.returncode == 0, good.stderr

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    subprocess.run(["cp", "-r", str(DOCS), str(copy / "docs")], check=True)
    page = copy / "docs" / "api.md"
    page.write_text(page.read_text() + "\nSee [nowhere](operations/no-such-page.md).\n")
    broken = subprocess.run(
        [*build, "--site-dir", str(tmp_path / "broken")],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert broken.returncode != 0
    assert "no-such-page.md" in broken.stderr


def test_nothing_in_the_repository_refers_to_a_file_outside_it() -> None:
    # Spelled in pieces so this file does not match itself.
    outside = ["DESIGN" + ".md", "spec" + "/image-message", "../" + "shared", "/work" + "/shared"]
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    found = []
    for name in filter(None, files.split("\0")):
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".lock", ".ico", ".woff2", ".gz"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}: {word}" for word in outside if word in text]
    assert found == []
