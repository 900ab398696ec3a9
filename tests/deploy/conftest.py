"""Render the Helm chart once per profile (helm-python-sdk: Helm's own Go SDK, no helm binary)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.harness import ROOT

CHART = ROOT / "deploy" / "helm" / "chat-management"
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "chat"
NAMESPACE = "chat-ns"


class Rendered:
    """The objects one profile renders, with the template each came from."""

    def __init__(self, profile: str, manifests: dict[str, str]) -> None:
        self.profile = profile
        self.notes = ""
        self.objects: list[tuple[str, dict[str, Any]]] = []
        for template, text in sorted(manifests.items()):
            if template.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append((template, doc))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"{self.profile}: {len(matches)} {kind} named {name}"
        return matches[0]


def profile_values(profile: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{profile}-values.yaml").read_text()) or {}
    return values


def render_values(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@functools.cache
def rendered(profile: str) -> Rendered:
    return Rendered(profile, render_values(profile_values(profile)))


def values_with_web(profile: str) -> dict[str, Any]:
    """A profile with the optional web client (``services.web``, off by default) turned on."""
    values = profile_values(profile)
    values.setdefault("services", {}).setdefault("web", {})["enabled"] = True
    return values


@functools.cache
def rendered_with_web(profile: str) -> Rendered:
    return Rendered(profile, render_values(values_with_web(profile)))


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> Rendered:
    return rendered(str(request.param))


def component_name(component: str) -> str:
    return f"{RELEASE}-chat-management-{component}"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
