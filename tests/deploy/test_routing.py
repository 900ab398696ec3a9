"""The rendered Ingress and HTTPRoute send each API path to the service that serves it.

Routing is computed the way the controllers do it:
* ingress-nginx with ``use-regex``: every path is a case-insensitive regex anchored at the start
  (``location ~* "^<path>"``); locations are ordered by path length, longest first; the first match wins.
* Gateway API (Envoy Gateway, Contour, NGINX Gateway Fabric, kgateway): Exact, then RegularExpression
  (full match, in rule order), then the longest PathPrefix (matching whole path segments). GKE's Gateway
  has no RegularExpression: its profile must do with Exact and PathPrefix (checked below).

A path reaches the right place when the Service it is sent to selects pods that serve that component
(`chat-management serve <component> [also served...]`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from chat_core.app_factory import create_service_app
from chat_core.composition import Composition
from chat_devstack import gateway
from chat_management import all as all_in_one
from chat_management import webclient
from tests.conftest import make_settings
from tests.deploy.conftest import (
    CHART,
    PROFILES,
    RELEASE,
    Rendered,
    load_yaml,
    rendered,
    rendered_with_web,
)

OBJECT_PATH = "/images/c1/images/alice/20240419-123456-3f0c2a1e-9b7d-4c1e-8f00-1234567890ab.jpg"
# Every public path of docs/api.md: path -> the service that must get it (None: not public).
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


GATEWAY_PROFILES = ("gateway-envoy", "gateway-gke")


def _component_of(service_name: str) -> str:
    # The /ws route of GKE goes to a Service of its own (for its timeout policy) over the message pods.
    return service_name.removeprefix(f"{RELEASE}-chat-management-").removesuffix("-ws")


def served_by(profile: Rendered, component: str | None) -> set[str | None]:
    """The components the pods behind ``component``'s Service serve (their `serve` arguments)."""
    if component is None:
        return {None}
    deployment = profile.named("Deployment", f"{RELEASE}-chat-management-{component}")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    return set(args[1:])


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


@pytest.mark.parametrize("profile_name", GATEWAY_PROFILES)
@pytest.mark.parametrize(("path", "component"), SPEC_PATHS.items())
def test_httproute_sends_each_path_to_its_service(
    profile_name: str, path: str, component: str | None
) -> None:
    profile = rendered(profile_name)
    assert component in served_by(profile, gateway_route(profile.of_kind("HTTPRoute"), path))


def test_gke_routes_use_only_the_path_matches_gkes_gateway_supports() -> None:
    for route in rendered("gateway-gke").of_kind("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                assert match["path"]["type"] in {"Exact", "PathPrefix"}, match


def test_envoy_gateway_sends_the_upload_path_to_the_upload_pods_alone() -> None:
    profile = rendered("gateway-envoy")
    backend = gateway_route(profile.of_kind("HTTPRoute"), "/conversations/c1/images/upload_url")
    assert backend == "upload"
    assert served_by(profile, "message") == {"message"}


def test_ingress_class_and_annotations_come_from_values() -> None:
    profile = rendered("production-aws")
    api, ws = (
        profile.named("Ingress", f"{RELEASE}-chat-management"),
        profile.named("Ingress", f"{RELEASE}-chat-management-ws"),
    )
    for ingress in (api, ws):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"][0]["secretName"] == "chat-example-com-tls"
    # WebSockets outlive nginx's default 60 s read timeout; nothing else gets an hour.
    assert int(ws["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert "nginx.ingress.kubernetes.io/proxy-read-timeout" not in api["metadata"]["annotations"]
    assert [p["path"] for rule in ws["spec"]["rules"] for p in rule["http"]["paths"]] == ["/ws(/|$)"]


def test_envoy_gateway_socket_timeout_applies_to_the_ws_route_alone() -> None:
    profile = rendered("gateway-envoy")
    (policy,) = profile.of_kind("BackendTrafficPolicy")
    (target,) = policy["spec"]["targetRefs"]
    ws_route = profile.named("HTTPRoute", target["name"])
    paths = [m["path"]["value"] for rule in ws_route["spec"]["rules"] for m in rule["matches"]]
    assert paths == ["/ws"]
    assert policy["spec"]["timeout"]["http"]["requestTimeout"] == "3600s"


def test_gke_socket_timeout_applies_to_a_service_only_the_ws_route_uses() -> None:
    profile = rendered("gateway-gke")
    (policy,) = profile.of_kind("GCPBackendPolicy")
    assert policy["spec"]["default"]["timeoutSec"] == 3600
    target = policy["spec"]["targetRef"]["name"]
    users = {
        m["path"]["value"]
        for route in profile.of_kind("HTTPRoute")
        for rule in route["spec"]["rules"]
        for m in rule["matches"]
        if any(ref["name"] == target for ref in rule["backendRefs"])
    }
    assert users == {"/ws"}
    service = profile.named("Service", target)
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "message"


def test_gke_load_balancer_health_checks_readiness() -> None:
    profile = rendered("gateway-gke")
    checked = {p["spec"]["targetRef"]["name"]: p for p in profile.of_kind("HealthCheckPolicy")}
    routed = {
        ref["name"]
        for route in profile.of_kind("HTTPRoute")
        for rule in route["spec"]["rules"]
        for ref in rule["backendRefs"]
    }
    assert routed <= set(checked)
    for policy in checked.values():
        assert policy["spec"]["default"]["config"]["httpHealthCheck"]["requestPath"] == "/readyz"


def test_routes_point_at_rendered_services_and_ports() -> None:
    for name, kind in (
        ("production-aws", "Ingress"),
        ("gateway-gke", "HTTPRoute"),
        ("gateway-envoy", "HTTPRoute"),
    ):
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
    backends = Composition(settings)
    parts = module.build(settings, module.ports(backends))
    app = create_service_app(settings, backends, [parts], component=component, title=component)
    bare = create_service_app(settings, Composition(settings), [], component="bare", title="bare")
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
    for path in paths:
        assert nginx_route(ingresses, "chat.example.com", path) == component, path
        for name in GATEWAY_PROFILES:
            profile = rendered(name)
            assert component in served_by(profile, gateway_route(profile.of_kind("HTTPRoute"), path)), (
                name,
                path,
            )


def test_the_consumer_serves_nothing_public(tmp_path: Path) -> None:
    assert served_paths("notification-consumer", tmp_path) == []


def test_message_pods_serving_upload_too_have_both_services_routes(tmp_path: Path) -> None:
    # GKE's profile sends the whole /conversations prefix to `serve message upload`.
    settings = make_settings(tmp_path)
    combined = all_in_one.create_combined_app(["message", "upload"], settings)
    paths = {route.path for route in combined.routes}
    assert "/conversations/{conversation_id:str}/images/upload_url" in paths
    assert "/conversations/{conversation_id:str}/messages" in paths
    assert "/ws" in paths


# --- the optional web client, and make dev's gateway (same route table) --------------------------------
# With services.web.enabled: the page and its files go to the web pods; /dev/token (DEV_LOGIN, laptops
# only) is the dev gateway's alone and reaches nothing in a chart.
WEB_PATHS: dict[str, str | None] = {
    **SPEC_PATHS,
    "/": "web",
    "/web/app.js": "web",
    "/web/vendor/preact.module.js": "web",
    "/dev/token": None,
    "/website": None,
}
DEV_ONLY_PATHS = {"/dev/token": "web"}


@pytest.mark.parametrize(("path", "component"), WEB_PATHS.items())
def test_with_web_enabled_the_ingress_sends_the_page_to_it(path: str, component: str | None) -> None:
    ingresses = rendered_with_web("production-aws").of_kind("Ingress")
    assert nginx_route(ingresses, "chat.example.com", path) == component


@pytest.mark.parametrize("profile_name", GATEWAY_PROFILES)
@pytest.mark.parametrize(("path", "component"), WEB_PATHS.items())
def test_with_web_enabled_the_httproute_sends_the_page_to_it(
    profile_name: str, path: str, component: str | None
) -> None:
    profile = rendered_with_web(profile_name)
    assert component in served_by(profile, gateway_route(profile.of_kind("HTTPRoute"), path))


@pytest.mark.parametrize("profile_name", PROFILES)
def test_no_profile_routes_the_dev_sign_in(profile_name: str) -> None:
    profile = rendered_with_web(profile_name)
    paths = [
        p["path"] for i in profile.of_kind("Ingress") for r in i["spec"]["rules"] for p in r["http"]["paths"]
    ]
    paths += [
        m["path"]["value"]
        for h in profile.of_kind("HTTPRoute")
        for r in h["spec"]["rules"]
        for m in r["matches"]
    ]
    assert not [path for path in paths if "dev" in path]


def test_every_route_of_serve_web_reaches_the_web_pods(tmp_path: Path) -> None:
    app = webclient.create_app(make_settings(tmp_path))
    bare = create_service_app(
        make_settings(tmp_path), Composition(make_settings(tmp_path)), [], component="b", title="b"
    )
    templates = {route.path for route in app.routes} - {route.path for route in bare.routes}
    assert templates == {"/", "/web/{name:path}"}
    for path in ("/", "/web/app.css"):
        assert (
            nginx_route(rendered_with_web("production-aws").of_kind("Ingress"), "chat.example.com", path)
            == "web"
        )
        for name in GATEWAY_PROFILES:
            profile = rendered_with_web(name)
            assert "web" in served_by(profile, gateway_route(profile.of_kind("HTTPRoute"), path)), (
                name,
                path,
            )


@pytest.mark.parametrize(("path", "component"), {**WEB_PATHS, **DEV_ONLY_PATHS}.items())
def test_the_dev_gateway_routes_each_path_as_the_chart_does(path: str, component: str | None) -> None:
    # make dev's gateway reads the chart's own table (files/routes.yaml) with the Gateway API's rules:
    # it agrees with the rendered HTTPRoute of the Envoy profile and with the Ingress, path by path.
    route = gateway.route_for(gateway.load_routes(), path)
    assert (route.component if route else None) == component
    if path not in DEV_ONLY_PATHS:
        envoy = rendered_with_web("gateway-envoy")
        assert gateway_route(envoy.of_kind("HTTPRoute"), path) == component
        ingresses = rendered_with_web("production-aws").of_kind("Ingress")
        assert nginx_route(ingresses, "chat.example.com", path) == component


def test_the_dev_gateway_reads_the_table_the_chart_renders() -> None:
    assert gateway.ROUTES_FILE == CHART / "files" / "routes.yaml"
    table = load_yaml(gateway.ROUTES_FILE)
    rendered_matches = {
        (m["path"]["type"], m["path"]["value"])
        for h in rendered_with_web("gateway-envoy").of_kind("HTTPRoute")
        for r in h["spec"]["rules"]
        for m in r["matches"]
    }
    in_chart = {(e["match"]["type"], e["match"]["value"]) for e in table if not e.get("devOnly")}
    assert rendered_matches == in_chart
    assert {(r.match_type, r.value) for r in gateway.load_routes()} >= in_chart
