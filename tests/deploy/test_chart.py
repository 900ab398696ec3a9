"""The Helm chart: every ci/ profile renders, lints and validates; pods are restricted; routes are right."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from chat_core.settings import iter_env_vars, load_settings
from tests.deploy.conftest import (
    CHART,
    NAMESPACE,
    PROFILES,
    RELEASE,
    Rendered,
    component_name,
    profile_values,
    render_values,
    rendered,
    rendered_with_web,
    values_with_web,
)

# A current Kubernetes release; kubernetes-validate ships its OpenAPI schemas (strict: unknown fields fail).
KUBE_VERSION = "1.35.0"
SERVICES = ("upload", "message", "image-proxy", "notification-consumer", "media-processor")
PUBLIC_SERVICES = ("upload", "message", "image-proxy")
# Custom resources: kubernetes-validate has no schema for them. Each gets a test of what matters instead
# (ServiceMonitor -> selects a Service port; PrometheusRule -> is the promtool-tested rules file;
# HTTPRoute -> routes every spec path to its service).
CRD_KINDS = {
    "ServiceMonitor", "PrometheusRule", "HTTPRoute", "BackendTrafficPolicy", "GCPBackendPolicy",
    "HealthCheckPolicy", "ScaledObject", "TriggerAuthentication",
}  # fmt: skip
POD_KINDS = {"Deployment", "Job", "CronJob"}


def pod_specs(profile: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """(component, pod spec) of every workload the profile renders."""
    specs = []
    for _, obj in profile.objects:
        if obj["kind"] not in POD_KINDS:
            continue
        template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else None
        template = template or obj["spec"]["template"]
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        specs.append((component, template["spec"]))
    return specs


def chat_pod_specs(profile: Rendered) -> list[tuple[str, dict[str, Any]]]:
    # The test profile's Redis, LocalStack and Firestore emulator run third-party images as they ship.
    return [(c, spec) for c, spec in pod_specs(profile) if not c.startswith("test-")]


# --- render, lint, validate --------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_profile_lints_clean(name: str) -> None:
    report = helm.lint(str(CHART), profile_values(name), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"], report
    assert not problems, report


def test_every_manifest_is_valid_for_kubernetes(profile: Rendered) -> None:
    invalid = []
    for template, obj in profile.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            invalid.append(f"{template} {obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")
    assert not invalid, "\n".join(invalid)


def test_profiles_cover_the_chart() -> None:
    assert {"default", "production-aws", "gateway-gke", "test"} <= set(PROFILES)
    kinds = {obj["kind"] for name in PROFILES for _, obj in rendered(name).objects}
    assert kinds >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
        "ServiceMonitor", "Ingress", "HTTPRoute", "PrometheusRule", "ConfigMap", "CronJob", "Job",
        "ServiceAccount",
    }  # fmt: skip


def test_values_schema_refuses_unknown_keys() -> None:
    with pytest.raises(helm.HelmValuesError, match="servicez"):
        render_values({"servicez": {}})
    with pytest.raises(helm.HelmValuesError, match="replica"):
        render_values({"services": {"upload": {"enabled": True, "replica": 3}}})


def test_values_schema_refuses_a_config_variable_the_services_do_not_read() -> None:
    with pytest.raises(helm.HelmValuesError, match="S3_BUCKET"):
        render_values({"config": {"S3_BUCKET": "typo"}})


def test_values_schema_lists_every_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    listed = set(schema["properties"]["config"]["properties"])
    laptop_only = {"DEV_LOGIN"}  # refused by the chart (deploy/chart_schema.py NOT_IN_CHART)
    wanted = {name for name, _, _ in iter_env_vars()} - laptop_only
    assert listed == wanted, "stale values.schema.json: run `make docs`"


def test_render_refuses_s3_without_a_bucket() -> None:
    with pytest.raises(helm.HelmError, match="S3_BUCKET_NAME"):
        render_values({"config": {"AUTH_JWKS_URL": "https://idp/jwks"}})


def test_render_refuses_a_release_without_token_verification() -> None:
    with pytest.raises(helm.HelmError, match="AUTH_JWKS_URL"):
        render_values({"config": {"S3_BUCKET_NAME": "b"}})


# --- the loop over services ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["Deployment", "Service", "ServiceAccount", "NetworkPolicy"])
def test_every_service_gets_its_objects_from_the_one_loop(kind: str) -> None:
    names = {obj["metadata"]["name"] for obj in rendered("production-aws").of_kind(kind)}
    assert {component_name(s) for s in SERVICES} <= names


def test_a_disabled_service_renders_nothing() -> None:
    values = profile_values("default")
    values["services"] = {"notification-consumer": {"enabled": False}}
    objects = Rendered("x", render_values(values)).objects
    assert not [o for _, o in objects if o["metadata"]["name"] == component_name("notification-consumer")]


def test_every_object_carries_the_recommended_labels(profile: Rendered) -> None:
    for _, obj in profile.objects:
        labels = obj["metadata"].get("labels", {})
        for key in ("name", "instance", "version", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, f"{obj['kind']}/{obj['metadata']['name']}: {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE


def test_each_service_runs_its_own_serve_target() -> None:
    for deployment in rendered("default").of_kind("Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["serve", component]


def test_service_accounts_carry_per_service_cloud_roles() -> None:
    profile = rendered("production-aws")
    roles = {
        sa["metadata"]["name"]: sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        for sa in profile.of_kind("ServiceAccount")
        if sa["metadata"]["name"] != component_name("smoke-test")  # asks /readyz: no cloud role
    }
    for component in (*SERVICES, "cleanup"):
        assert roles[component_name(component)].endswith(f"role/chat-{component}")


def test_workload_identity_annotation_reaches_every_service_account() -> None:
    for sa in rendered("gateway-gke").of_kind("ServiceAccount"):
        if sa["metadata"]["name"] == component_name("smoke-test"):
            continue  # `helm test` asks /readyz: it calls no Google API
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        )


def _container(profile: Rendered, component: str) -> dict[str, Any]:
    spec = profile.named("Deployment", component_name(component))["spec"]["template"]["spec"]
    container: dict[str, Any] = spec["containers"][0]
    return container


def test_secrets_are_referenced_never_inlined() -> None:
    profile = rendered("production-aws")
    assert not profile.of_kind("Secret")
    env = {
        e["name"]: e
        for e in rendered("gateway-gke").named("Deployment", component_name("message"))["spec"]["template"][
            "spec"
        ]["containers"][0]["env"]
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "chat-aws",
        "key": "secret-access-key",
    }


def _message_env(profile: Rendered) -> dict[str, dict[str, Any]]:
    container = profile.named("Deployment", component_name("message"))["spec"]["template"]["spec"][
        "containers"
    ][0]
    return {e["name"]: e for e in container["env"]}


def test_managed_redis_cluster_with_tls_and_credentials_from_a_secret() -> None:
    # ElastiCache cluster mode: sharded pub/sub, TLS, the RBAC user and password from a Secret.
    profile = rendered("production-aws")
    config = profile.named("ConfigMap", f"{RELEASE}-chat-management-config")["data"]
    assert config["REDIS_MODE"] == "cluster"
    assert config["REDIS_URL"].startswith("rediss://")
    assert "@" not in config["REDIS_URL"]  # no credentials in the URL
    env = _message_env(profile)
    for name, key in (("REDIS_USERNAME", "username"), ("REDIS_PASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "chat-redis", "key": key}
    settings = load_settings({**config, "REDIS_USERNAME": "chat", "REDIS_PASSWORD": "p@ss/word:1"})
    assert settings.redis.mode == "cluster"
    assert settings.redis.address().startswith("rediss://chat:p%40ss%2Fword%3A1@clustercfg.")


def test_memorystore_with_its_own_ca_reaches_its_tls_port() -> None:
    profile = rendered("gateway-gke")
    config = profile.named("ConfigMap", f"{RELEASE}-chat-management-config")["data"]
    assert config["REDIS_URL"].startswith("rediss://")
    env = _message_env(profile)
    assert env["REDIS_TLS_CA_CERT"]["valueFrom"]["secretKeyRef"]["name"] == "chat-redis"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "chat-redis"
    policy = profile.named("NetworkPolicy", component_name("message"))
    ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert 6378 in ports


def test_numbers_reach_the_services_as_the_settings_parse_them() -> None:
    values = profile_values("default")
    values["config"] |= {"MAX_IMAGE_BYTES": 20971520, "MEMBERSHIP_CACHE_SECONDS": 2.5, "ACCESS_LOG": False}
    values["services"] = {"upload": {"enabled": True, "env": {"UPLOAD_URL_TTL_SECONDS": 7200}}}
    profile = Rendered("numbers", render_values(values))
    config = profile.named("ConfigMap", f"{RELEASE}-chat-management-config")["data"]
    assert (config["MAX_IMAGE_BYTES"], config["MEMBERSHIP_CACHE_SECONDS"], config["ACCESS_LOG"]) == (
        "20971520",
        "2.5",
        "false",
    )
    container = profile.named("Deployment", component_name("upload"))["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert {"name": "UPLOAD_URL_TTL_SECONDS", "value": "7200"} in container["env"]


def test_config_map_holds_the_configured_variables() -> None:
    config = rendered("production-aws").named("ConfigMap", f"{RELEASE}-chat-management-config")["data"]
    assert config["S3_BUCKET_NAME"] == "zalo-phake-images"
    assert config["OBJECT_STORE"] == "s3"


# --- pods ----------------------------------------------------------------------------------------------
def test_every_pod_has_the_restricted_security_context(profile: Rendered) -> None:
    specs = chat_pod_specs(profile)
    assert specs
    for component, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, component
        assert pod["runAsUser"] != 0, component
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", component
        assert spec["automountServiceAccountToken"] is False, component
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_namespace), component
        assert not any("hostPath" in volume for volume in spec.get("volumes", [])), component
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, component
            assert sc["readOnlyRootFilesystem"] is True, component
            assert sc["capabilities"]["drop"] == ["ALL"], component
            assert not sc["capabilities"].get("add"), component
            assert sc.get("privileged") is not True, component
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], component


def test_service_pods_probe_health_and_readiness_and_drain_on_stop() -> None:
    profile = rendered("default")
    for deployment in profile.of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]["memory"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        drain = float(env["SHUTDOWN_DRAIN_SECONDS"])
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
        # SIGKILL must not cut the drain short.
        assert spec["terminationGracePeriodSeconds"] > drain + pre_stop


def test_autoscaler_and_disruption_budget_target_their_service() -> None:
    profile = rendered("default")
    for component in SERVICES:
        name = component_name(component)
        hpa = profile.named("HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        pdb = profile.named("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        assert "replicas" not in profile.named("Deployment", name)["spec"]  # the HPA owns it


# --- network policies -----------------------------------------------------------------------------------
def _ingress_sources(policy: dict[str, Any]) -> list[str]:
    sources = []
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            sources.append(
                labels.get("app.kubernetes.io/name", "") + "/" + labels.get("app.kubernetes.io/component", "")
            )
    return sources


def test_public_services_admit_only_the_ingress_controller_and_prometheus() -> None:
    profile = rendered("default")
    for component in PUBLIC_SERVICES:
        sources = _ingress_sources(profile.named("NetworkPolicy", component_name(component)))
        assert sorted(sources) == ["chat-management/smoke-test", "ingress-nginx/", "prometheus/"], component


def test_notification_consumer_admits_only_prometheus() -> None:
    policy = rendered("default").named("NetworkPolicy", component_name("notification-consumer"))
    assert _ingress_sources(policy) == ["prometheus/", "chat-management/smoke-test"]


def test_only_the_services_on_the_event_bus_or_the_ledger_may_reach_redis() -> None:
    # message publishes and serves sockets; upload and image-proxy hear membership changes (their caches);
    # the media processor publishes message.updated and moves the storage ledger; the cleanup job sets
    # the ledger to what it counted.
    profile = rendered("default")
    for component in (*SERVICES, "cleanup"):
        ports = {
            port["port"]
            for rule in profile.named("NetworkPolicy", component_name(component))["spec"]["egress"]
            for port in rule["ports"]
        }
        reach_redis = {"message", "upload", "image-proxy", "media-processor", "cleanup"}
        assert (6379 in ports) == (component in reach_redis), component
        assert {53, 443} <= ports, component


def test_the_test_profile_lets_the_smoke_job_call_the_public_services() -> None:
    policy = rendered("test").named("NetworkPolicy", component_name("upload"))
    assert "chat-management/smoke-test" in _ingress_sources(policy)


# --- monitoring objects ----------------------------------------------------------------------------------
def test_service_monitors_select_their_service_metrics_port() -> None:
    profile = rendered("production-aws")
    for component in SERVICES:
        name = component_name(component)
        monitor = profile.named("ServiceMonitor", name)
        service = profile.named("Service", name)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_prometheus_rule_is_the_promtool_tested_rules_file() -> None:
    from tests.deploy.conftest import load_yaml

    rule = rendered("production-aws").named("PrometheusRule", f"{RELEASE}-chat-management")
    assert rule["spec"] == load_yaml(CHART / "files" / "alerts.yaml")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    profile = rendered("production-aws")
    maps = [
        cm for cm in profile.of_kind("ConfigMap") if cm["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == len(list((CHART / "files" / "dashboards").glob("*.json"))) >= 5
    uids = set()
    for cm in maps:
        ((_, text),) = cm["data"].items()
        uids.add(json.loads(text)["uid"])
    assert len(uids) == len(maps)


def test_dashboards_can_live_in_grafanas_namespace() -> None:
    maps = [
        cm
        for cm in rendered("gateway-gke").of_kind("ConfigMap")
        if "grafana_dashboard" in cm["metadata"]["labels"]
    ]
    assert maps
    assert all(cm["metadata"]["namespace"] == "grafana" for cm in maps)


# --- cleanup and smoke test -------------------------------------------------------------------------------
def test_cleanup_cronjob_runs_one_scan_at_a_time() -> None:
    cron = rendered("production-aws").named("CronJob", component_name("cleanup"))
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["cleanup-orphans"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PUSHGATEWAY_URL"] == "http://prometheus-pushgateway.monitoring:9091"
    assert env["PUSHGATEWAY_INSTANCE"] == f"{NAMESPACE}/{RELEASE}"  # one group per release


def test_cleanup_dry_run_is_passed_to_the_command() -> None:
    cron = rendered("gateway-gke").named("CronJob", component_name("cleanup"))
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["cleanup-orphans", "--dry-run"]


def test_test_profile_runs_the_backends_in_cluster_and_a_helm_test_smoke_job() -> None:
    profile = rendered("test")
    backends = {d["metadata"]["name"] for d in profile.of_kind("Deployment")}
    assert {f"{RELEASE}-chat-management-{b}" for b in ("redis", "localstack", "firestore")} <= backends
    job = profile.named("Job", component_name("smoke-test"))
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "smoke"
    assert f"http://{component_name('image-proxy')}:8000" in args
    container = profile.named("Deployment", component_name("message"))["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"] == f"http://{RELEASE}-chat-management-localstack:4566"
    assert env["FIRESTORE_EMULATOR_HOST"] == f"{RELEASE}-chat-management-firestore:8080"


def test_production_profiles_render_no_test_backends() -> None:
    for name in ("default", "production-aws", "gateway-gke"):
        components = {c for c, _ in pod_specs(rendered(name))}
        assert not {c for c in components if c.startswith("test-") or c == "setup"}, name
        # `helm test` there asks readiness only: no token can be minted for a real identity provider.
        (smoke,) = [spec for c, spec in pod_specs(rendered(name)) if c == "smoke-test"]
        assert "--ready-only" in smoke["containers"][0]["args"], name


def test_notes_tell_how_to_reach_the_release() -> None:
    notes = rendered("test").notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert component_name("message") in notes


# --- the optional web client (services.web) -----------------------------------------------------------
def test_the_web_client_is_off_by_default_in_every_profile() -> None:
    for name in PROFILES:
        names = {obj["metadata"]["name"] for _, obj in rendered(name).objects}
        assert component_name("web") not in names, name


@pytest.mark.parametrize("name", PROFILES)
def test_each_profile_with_the_web_client_on_lints_validates_and_runs_serve_web(name: str) -> None:
    report = helm.lint(str(CHART), values_with_web(name), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report
    profile = rendered_with_web(name)
    test_every_manifest_is_valid_for_kubernetes(profile)
    test_every_pod_has_the_restricted_security_context(profile)
    test_every_object_carries_the_recommended_labels(profile)
    deployment = profile.named("Deployment", component_name("web"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve", "web"]
    profile.named("Service", component_name("web"))
    # clients reach it through the ingress controller or gateway, exactly like the message service
    policy = profile.named("NetworkPolicy", component_name("web"))
    message = profile.named("NetworkPolicy", component_name("message"))
    assert policy["spec"]["ingress"] == message["spec"]["ingress"]
    if name == "gateway-gke":  # GKE's load balancer health-checks /readyz, not the page
        check = profile.named("HealthCheckPolicy", component_name("web"))
        assert check["spec"]["default"]["config"]["httpHealthCheck"]["requestPath"] == "/readyz"
    assert "DEV_LOGIN" not in json.dumps([obj for _, obj in profile.objects])
    assert "The web client is at /" in profile.notes
    assert "The web client" not in rendered(name).notes


def test_the_media_processor_can_scale_on_its_queue_with_keda() -> None:
    profile = rendered("production-aws")
    name = component_name("media-processor")
    (scaled,) = [o for o in profile.of_kind("ScaledObject") if o["metadata"]["name"] == name]
    assert scaled["spec"]["scaleTargetRef"]["name"] == name
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"]["queueURL"].endswith("/chat-management-media")
    # KEDA owns the replica count: no CPU HPA beside it, no fixed replicas.
    assert name not in [o["metadata"]["name"] for o in profile.of_kind("HorizontalPodAutoscaler")]
    assert "replicas" not in profile.named("Deployment", name)["spec"]
    assert not rendered("default").of_kind("ScaledObject")
