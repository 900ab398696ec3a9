"""The rendered Ingress and HTTPRoute send each API path to the service that serves it.

Routing is computed the way the controllers do it:
* ingress-nginx with ``use-regex``: every path is a case-insensitive regex anchored at the start
  (``location ~* "^<path>"``); locations are ordered by path length, longest first; the first match wins.
* Gateway API (Envoy Gateway, Contour, NGINX Gateway Fabric, kgateway): Exact, then RegularExpression
  (full match, in rule order), then the longest PathPrefix (matching whole path segments).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from chat_core.app_factory import create_service_app
from chat_core.backends import Backends
from chat_management import all as all_in_one
from tests.conftest import make_settings
from tests.deploy.conftest import RELEASE, Rendered, rendered

OBJECT_PATH = "/images/c1/images/alice/20240419-123456-3f0c2a1e-9b7d-4c1e-8f00-1234567890ab.jpg"
# The spec's paths and DESIGN.md's: path -> the service that must get it (None: not public).
SPEC_PATHS: dict[str, str | None] = {
    "/conversations/c1/images/upload_url": "upload",
    "/conversations/Conv_9-x/images/upload_url": "upload",
    "/conversations": "message",
    "/conversations/c1": "message",
    "/conversations/c1/messages": "message",
    "/conversations/c1/messages/m1/read": "message",
    "/conversations/c1/members": "message",
    "/conversations/c1/images/upload_url/extra": "message",
    "/ws": "message",
    "/me/devices/fcm-token-123": "message",
    OBJECT_PATH: "image-proxy",
    "/metrics": None,
    "/healthz": None,
    "/readyz": None,
    "/docs": None,
    "/": None,
}


def _component_of(service_name: str) -> str:
    return service_name.removeprefix(f"{RELEASE}-chat-management-")


def nginx_route(ingresses: list[dict[str, Any]], host: str, path: str) -> str | None:
    locations: list[tuple[str, str]] = []
    for ingress in ingresses:
        assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
        for rule in ingress["spec"]["rules"]:
            if rule["host"] != host:
                continue
            for entry in rule["http"]["paths"]:
                assert entry["pathType"] == "ImplementationSpecific"
                locations.append((entry["path"], entry["backend"]["service"]["name"]))
    locations.sort(key=lambda location: len(location[0]), reverse=True)
    for pattern, service in locations:
        if re.match("^" + pattern, path, re.IGNORECASE):
            return _component_of(service)
    return None


def gateway_route(routes: list[dict[str, Any]], path: str) -> str | None:
    regex: list[tuple[str, str]] = []
    prefixes: list[tuple[str, str]] = []
    exact: list[tuple[str, str]] = []
    for route in routes:
        for rule in route["spec"]["rules"]:
            (backend,) = rule["backendRefs"]
            for match in rule["matches"]:
                kind, value = match["path"]["type"], match["path"]["value"]
                {"Exact": exact, "RegularExpression": regex, "PathPrefix": prefixes}[kind].append(
                    (value, backend["name"])
                )
    for value, service in exact:
        if path == value:
            return _component_of(service)
    for value, service in regex:
        if re.fullmatch(value, path):
            return _component_of(service)
    for value, service in sorted(prefixes, key=lambda p: len(p[0]), reverse=True):
        prefix = value.rstrip("/")
        if path == prefix or path.startswith(prefix + "/") or prefix == "":
            return _component_of(service)
    return None


@pytest.mark.parametrize(("path", "component"), SPEC_PATHS.items())
def test_ingress_sends_each_path_to_its_service(path: str, component: str | None) -> None:
    profile = rendered("production-aws")
    assert nginx_route(profile.of_kind("Ingress"), "chat.example.com", path) == component


@pytest.mark.parametrize(("path", "component"), SPEC_PATHS.items())
def test_httproute_sends_each_path_to_its_service(path: str, component: str | None) -> None:
    assert gateway_route(rendered("gateway-gke").of_kind("HTTPRoute"), path) == component


def test_ingress_class_and_annotations_come_from_values() -> None:
    (ingress,) = rendered("production-aws").of_kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "chat-example-com-tls"
    # WebSockets outlive nginx's default 60 s read timeout.
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_routes_point_at_rendered_services_and_ports() -> None:
    for name, kind in (("production-aws", "Ingress"), ("gateway-gke", "HTTPRoute")):
        profile: Rendered = rendered(name)
        services = {s["metadata"]["name"]: s for s in profile.of_kind("Service")}
        for obj in profile.of_kind(kind):
            if kind == "Ingress":
                backends = [
                    (p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
                    for rule in obj["spec"]["rules"]
                    for p in rule["http"]["paths"]
                ]
                for service, port in backends:
                    assert port in {p["name"] for p in services[service]["spec"]["ports"]}
            else:
                for rule in obj["spec"]["rules"]:
                    for ref in rule["backendRefs"]:
                        assert ref["port"] in {p["port"] for p in services[ref["name"]]["spec"]["ports"]}


# --- every route the services really serve -----------------------------------------------------------
def served_paths(component: str, tmp_path: Path) -> list[str]:
    """Concrete paths for every route the service itself adds (not health, metrics, docs or storage)."""
    module = all_in_one.SERVICES[component]
    settings = make_settings(tmp_path)
    backends = Backends(settings)
    parts = module.build(settings, backends)
    app = create_service_app(settings, backends, [parts], component=component, title=component)
    bare = create_service_app(settings, Backends(settings), [], component="bare", title="bare")
    adapter_paths = {path for handler in backends.route_handlers() for path in handler.paths}
    templates = {route.path for route in app.routes} - {route.path for route in bare.routes} - adapter_paths
    object_key = OBJECT_PATH.split("/", 3)[3]
    return sorted(
        re.sub(r"\{[^}:]+(:[a-z]+)?\}", lambda m: object_key if m.group(1) == ":path" else "c1", template)
        for template in templates
    )


@pytest.mark.parametrize("component", ["upload", "message", "image-proxy"])
def test_ingress_and_httproute_send_every_served_route_to_its_service(component: str, tmp_path: Path) -> None:
    paths = served_paths(component, tmp_path)
    if not paths:
        pytest.skip(f"the {component} service has no routes in this build yet")
    ingresses = rendered("production-aws").of_kind("Ingress")
    routes = rendered("gateway-gke").of_kind("HTTPRoute")
    for path in paths:
        assert nginx_route(ingresses, "chat.example.com", path) == component, path
        assert gateway_route(routes, path) == component, path


def test_the_consumer_serves_nothing_public(tmp_path: Path) -> None:
    assert served_paths("notification-consumer", tmp_path) == []
