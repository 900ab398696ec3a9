"""Each profile gives every workload what its code uses: the backends a component's own wiring asks for
(tests/deploy/wiring.py) decide the settings, credentials, readiness checks and network paths it must get.

Nothing here is a list per profile: a new service, a new port in a service or a new profile is checked
the same way.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from tests.deploy import wiring
from tests.deploy.conftest import PROFILES, Rendered, profile_values, rendered


@functools.cache
def _on_backends(profile: Rendered) -> list[tuple[wiring.Workload, Any, dict[str, set[str]]]]:
    found = []
    for workload in wiring.workloads(profile):
        if not workload.is_chat_image:
            continue
        backends = wiring.wired(workload)
        if backends is not None:
            found.append((workload, backends, wiring.kinds_of(backends)))
    return found


@pytest.mark.parametrize("name", PROFILES)
def test_every_workload_names_the_backends_its_code_uses(name: str) -> None:
    """A backend the code uses must be configured, not left at the laptop default the code falls back to."""
    missing = []
    for workload, _, kinds in _on_backends(rendered(name)):
        env = wiring.settings_env(workload)
        # (AWS_REGION's default, us-east-1, is a real region; these two defaults are a laptop's.)
        needed = {"redis": ["REDIS_URL"], "google": ["FIRESTORE_PROJECT_ID"]}
        for kind in kinds:
            for variable in needed.get(kind, []):
                if env.get(variable, wiring.DEFAULTS.get(variable)) == wiring.DEFAULTS.get(variable):
                    missing.append(f"{workload.component} uses {kind} but {variable} is not set")
    assert not missing, f"{name}: " + "; ".join(missing)


@pytest.mark.parametrize("name", PROFILES)
def test_every_workload_on_a_backend_gets_its_credentials_and_no_other(name: str) -> None:
    """What the profile gives one workload on a backend (REDIS_PASSWORD, a Google key file, ...) it must
    give every workload on that backend; a workload off it gets none of them."""
    profile = rendered(name)
    on = _on_backends(profile)
    given: dict[str, set[str]] = {}
    for workload, _, _ in on:
        for kind, variable in wiring.family_variables(workload):
            given.setdefault(kind, set()).add(variable)
    problems = []
    for workload, _, kinds in on:
        has = set(wiring.family_variables(workload))
        for kind, variables in given.items():
            for variable in sorted(variables):
                if kind in kinds and (kind, variable) not in has:
                    problems.append(f"{workload.component} uses {kind} but lacks {variable}")
                if kind not in kinds and (kind, variable) in has:
                    problems.append(f"{workload.component} does not use {kind} yet gets {variable}")
    assert not problems, f"{name}: " + "; ".join(problems)


def _has_identity(workload: wiring.Workload, kind: str) -> bool:
    env, annotations = wiring.settings_env(workload), workload.annotations()
    if kind == "aws":
        return bool(
            env.get("AWS_ENDPOINT_URL")  # LocalStack (the test profile)
            or "eks.amazonaws.com/role-arn" in annotations  # IRSA
            or {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(workload.secret_refs)
        )
    if kind == "google":
        return bool(
            env.get("FIRESTORE_EMULATOR_HOST")
            or "iam.gke.io/gcp-service-account" in annotations  # Workload Identity
            or "GOOGLE_APPLICATION_CREDENTIALS" in env
        )
    if kind == "fcm":
        return "FCM_CREDENTIALS_FILE" in env or "iam.gke.io/gcp-service-account" in annotations
    return True  # Redis: credentials are optional (checked for consistency above)


@pytest.mark.parametrize("name", PROFILES)
def test_every_workload_has_an_identity_for_each_cloud_it_calls(name: str) -> None:
    missing = [
        f"{workload.component} calls {kind} with no credentials (role annotation, key Secret or file)"
        for workload, _, kinds in _on_backends(rendered(name))
        for kind in kinds
        if not _has_identity(workload, kind)
    ]
    assert not missing, f"{name}: " + "; ".join(missing)


@pytest.mark.parametrize("name", PROFILES)
def test_readiness_asks_every_backend_kind_a_service_uses(name: str) -> None:
    problems = []
    for workload, backends, kinds in _on_backends(rendered(name)):
        if not workload.serves:
            continue
        probe = workload.container.get("readinessProbe", {}).get("httpGet", {})
        if probe.get("path") != "/readyz":
            problems.append(f"{workload.component}: the readiness probe is not /readyz")
        unchecked = set(kinds) - wiring.readiness_kinds(backends)
        if unchecked:
            problems.append(f"{workload.component}: /readyz does not ask {sorted(unchecked)}")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_the_media_processor_readiness_asks_redis_it_publishes_updates_on() -> None:
    for name in PROFILES:
        for workload, backends, kinds in _on_backends(rendered(name)):
            if workload.component == "media-processor":
                assert "redis" in kinds, name
                assert "redis" in backends.readiness_checks(), name


@pytest.mark.parametrize("name", PROFILES)
def test_network_policy_lets_every_workload_reach_what_its_code_calls(name: str) -> None:
    profile = rendered(name)
    problems = []
    for workload, backends, _ in _on_backends(profile):
        policy = wiring.network_policy_for(profile, workload)
        if policy is None:
            continue  # no NetworkPolicy selects the pod: nothing is refused
        for endpoint in wiring.endpoints(workload, backends):
            if not wiring.reaches(policy, endpoint.host, endpoint.port):
                problems.append(
                    f"{workload.component} cannot reach {endpoint.why} at {endpoint.host}:{endpoint.port}"
                )
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", PROFILES)
def test_every_workload_resolves_names_on_the_platform_it_targets(name: str) -> None:
    """kube-dns pods, NodeLocal DNSCache (169.254.20.10) and, on GKE, Cloud DNS at the metadata server."""
    profile = rendered(name)
    targets = wiring.dns_targets(profile, profile_values(name))
    problems = [
        f"{policy['metadata']['name']} cannot resolve through {target}"
        for policy in profile.of_kind("NetworkPolicy")
        if policy["spec"].get("egress")
        for target in targets
        if not wiring.reaches_dns(policy, target)
    ]
    assert not problems, f"{name}: " + "; ".join(problems)


def test_the_gke_profile_targets_gke_and_resolves_through_cloud_dns() -> None:
    profile = rendered("gateway-gke")
    assert "169.254.169.254" in wiring.dns_targets(profile, profile_values("gateway-gke"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_service_monitor_selects_exactly_one_service(name: str) -> None:
    profile = rendered(name)
    services = profile.of_kind("Service")
    for monitor in profile.of_kind("ServiceMonitor"):
        chosen = [
            s["metadata"]["name"]
            for s in services
            if wiring.selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        assert len(chosen) == 1, (name, monitor["metadata"]["name"], chosen)


@pytest.mark.parametrize("name", PROFILES)
def test_prometheus_operator_objects_carry_the_release_label(name: str) -> None:
    profile = rendered(name)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        for obj in profile.of_kind(kind):
            assert obj["metadata"]["labels"].get("release"), (name, kind, obj["metadata"]["name"])
