"""What an SRE installing a profile as written would otherwise hit: values nobody set, a /tmp too small
for libvips, forwarded addresses nobody trusts, settings the schema refused, floating images, a test
profile that changes on every render, a `helm test` only the test profile had."""

from __future__ import annotations

import base64
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from chat_core.settings import iter_env_vars, load_settings
from tests.deploy import wiring
from tests.deploy.conftest import (
    CHART,
    PROFILES,
    Rendered,
    component_name,
    profile_values,
    render_values,
    rendered,
)
from tests.harness import ROOT

PRODUCTION = [p for p in PROFILES if p not in ("default", "test")]
SMALLEST = {
    "S3_BUCKET_NAME": "b",
    "AUTH_JWKS_URL": "https://idp/jwks",
    "AUTH_ISSUER": "i",
    "AUTH_AUDIENCE": "a",
}
# The worst frame libvips spills to /tmp for one image worker: a 16-bit RGBA frame (8 bytes a pixel)
# it must turn (EXIF orientation), above its 100 MB disc threshold.
SPILL_BYTES_PER_PIXEL = 8
SCRATCH_HEADROOM = 64 * 2**20
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", text)
    assert match, text
    return int(float(match[1]) * UNITS[match[2]])


# --- values nobody can guess --------------------------------------------------------------------------
def test_the_chart_refuses_to_render_without_the_operators_redis() -> None:
    with pytest.raises(helm.HelmError, match=r"config\.REDIS_URL is required"):
        render_values({"config": SMALLEST})


def test_the_chart_refuses_to_render_without_the_firestore_project() -> None:
    with pytest.raises(helm.HelmError, match=r"config\.FIRESTORE_PROJECT_ID is required"):
        render_values({"config": {**SMALLEST, "REDIS_URL": "redis://10.0.0.5:6379/0"}})


def test_embedded_backends_need_neither() -> None:
    render_values(
        {"config": {**SMALLEST, "EVENT_BUS": "memory", "LIMIT_STORE": "memory", "MESSAGE_STORE": "sqlite"}}
    )


# --- the media processor's scratch space ------------------------------------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_the_media_processors_tmp_holds_what_libvips_spills(name: str) -> None:
    defaults = {n: d for n, d, _ in iter_env_vars()}
    for workload in wiring.workloads(rendered(name)):
        if workload.serves != ["media-processor"]:
            continue
        settings = load_settings(wiring.settings_env(workload))
        workers = settings.media.workers or int(
            quantity(str(workload.container["resources"].get("limits", {}).get("cpu", "2")))
        )
        need = workers * settings.media.max_image_pixels * SPILL_BYTES_PER_PIXEL + SCRATCH_HEADROOM
        (tmp,) = [v for v in workload.pod["volumes"] if v["name"] == "tmp"]
        size = quantity(tmp["emptyDir"]["sizeLimit"])
        assert size >= need, (name, tmp["emptyDir"]["sizeLimit"], need, defaults["MAX_IMAGE_PIXELS"])


# --- forwarded addresses ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_no_profile_sets_the_dead_forwarded_allow_ips(name: str) -> None:
    for workload in wiring.workloads(rendered(name)):
        assert "FORWARDED_ALLOW_IPS" not in workload.variables(), (name, workload.component)


@pytest.mark.parametrize("name", PROFILES)
def test_trusted_proxies_are_set_safely_for_the_profiles_router(name: str) -> None:
    values = profile_values(name)
    routed = values.get("ingress", {}).get("enabled", True) or values.get("httpRoute", {}).get("enabled")
    for workload in wiring.workloads(rendered(name)):
        if not workload.serves:
            continue
        proxies = load_settings(wiring.settings_env(workload)).limits.trusted_proxies
        assert "*" not in proxies, (name, workload.component)
        if routed and name != "test":
            # Behind a router the client's address is in X-Forwarded-For, from the router's addresses.
            assert proxies != ("127.0.0.1",), (name, workload.component)


def test_gke_trusts_exactly_googles_load_balancer_ranges() -> None:
    (workload,) = [w for w in wiring.workloads(rendered("gateway-gke")) if w.serves[:1] == ["message"]]
    assert load_settings(wiring.settings_env(workload)).limits.trusted_proxies == (
        "35.191.0.0/16",
        "130.211.0.0/22",
    )


# --- the values schema ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "AWS_DEFAULT_REGION",
        "AWS_STS_REGIONAL_ENDPOINTS",
    ],
)
def test_the_schema_accepts_the_standard_sdk_variables(variable: str) -> None:
    values = profile_values("default")
    values["config"][variable] = "x"
    render_values(values)


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
def test_the_schema_refuses_aws_secrets_in_the_config_map(variable: str) -> None:
    values = profile_values("default")
    values["config"][variable] = "x"
    with pytest.raises(helm.HelmValuesError):
        render_values(values)


# --- images ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRODUCTION)
def test_production_profiles_pull_the_image_by_digest(name: str) -> None:
    for workload in wiring.workloads(rendered(name)):
        image = workload.container["image"]
        assert wiring.IMAGE_DIGEST.match(image), (name, workload.component, image)


def test_compose_pins_every_image_and_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        image = str(service.get("image", ""))
        if image and not image.startswith("chat-management:"):
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert re.search(r"\d+\.\d+", tag), (name, image)  # a version, not `7-alpine` or `emulators`
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), (name, published)


# --- the test profile -----------------------------------------------------------------------------------
def test_the_test_profile_signs_with_the_same_secret_on_every_render() -> None:
    values = profile_values("test")
    first = Rendered("a", render_values(values)).named("Secret", component_name("test-auth"))
    again = Rendered("b", render_values(values)).named("Secret", component_name("test-auth"))
    assert first["data"] == again["data"]
    assert base64.b64decode(first["data"]["jwt-secret"]).decode() == values["testing"]["jwtSecret"]


def test_a_first_test_install_without_a_secret_is_refused_not_made_up() -> None:
    with pytest.raises(helm.HelmError, match=r"testing\.jwtSecret is required"):
        render_values({"testing": {"enabled": True}})


def test_the_setup_job_is_new_on_every_revision() -> None:
    def setup_jobs(revision: int) -> list[str]:
        with helm.Chart.load(str(CHART)) as chart:
            manifests = chart.render(
                profile_values("test"), name="chat", namespace="chat-ns", is_upgrade=True, revision=revision
            )
        return [
            o["metadata"]["name"]
            for o in Rendered("u", manifests).of_kind("Job")
            if "setup" in o["metadata"]["name"]
        ]

    assert setup_jobs(2) != setup_jobs(3)


def test_the_test_backends_do_not_run_as_root() -> None:
    for workload in wiring.workloads(rendered("test")):
        context: dict[str, Any] = workload.pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, workload.component
        assert int(context.get("runAsUser", 0)) > 0, workload.component


# --- helm test in every profile ---------------------------------------------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_helm_test_asks_every_components_readiness(name: str) -> None:
    profile = rendered(name)
    (smoke,) = [w for w in wiring.workloads(profile) if w.component == "smoke-test"]
    assert smoke.hook == "test"
    asked = {
        arg.split("=", 1)[0]
        for prev, arg in zip(smoke.args, smoke.args[1:], strict=False)
        if prev == "--ready"
    }
    served = {w.component for w in wiring.workloads(profile) if w.serves}
    assert asked == served, name
    # Each component admits the smoke Job on its port.
    for component in served:
        policy = profile.named("NetworkPolicy", component_name(component))
        sources = [
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            for rule in policy["spec"]["ingress"]
            for peer in rule["from"]
        ]
        assert "smoke-test" in sources, (name, component)


# --- documentation ---------------------------------------------------------------------------------------
def _readme() -> str:
    return (CHART / "README.md").read_text()


@pytest.mark.parametrize("name", PROFILES)
def test_the_chart_readme_lists_what_each_profile_needs_created_first(name: str) -> None:
    """Every Secret (and key) a profile's pods read is named in the chart's README."""
    readme = _readme()
    assert f"ci/{name}-values.yaml" in readme, name
    for workload in wiring.workloads(rendered(name)):
        for secret, key in workload.secret_refs.values():
            if secret.startswith(f"chat-{CHART.name}"):  # made by the chart itself (test profile)
                continue
            assert f"`{secret}`" in readme, (name, secret)
            assert f"`{key}`" in readme, (name, secret, key)
        for secret, _ in workload.secret_mounts.values():
            assert f"`{secret}`" in readme, (name, secret)


def test_the_chart_readme_documents_the_keda_trust_policy_and_upgrades() -> None:
    readme = _readme()
    for needed in ("identityOwner", "sts:AssumeRoleWithWebIdentity", "keda-operator", "## Upgrading"):
        assert needed in readme, needed


def test_chart_yaml_carries_artifacthub_annotations() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    annotations = chart.get("annotations", {})
    for key in (
        "artifacthub.io/category",
        "artifacthub.io/links",
        "artifacthub.io/images",
        "artifacthub.io/changes",
    ):
        assert key in annotations, key
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    assert any(i["image"].startswith("ghcr.io/chat-management/chat-management") for i in images)
