"""What each profile needs to work once installed, beyond rendering: files where settings name them,
secrets only where used, network paths the platform needs, autoscaling on the work, a stable test secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.conftest import PROFILES, Rendered, component_name, render_values, rendered
from tests.deploy.test_chart import pod_specs

SERVICES = ("upload", "message", "image-proxy", "notification-consumer")
BASE = {
    "config": {
        "S3_BUCKET_NAME": "b",
        "AUTH_JWKS_URL": "https://idp/jwks",
        "AUTH_ISSUER": "i",
        "AUTH_AUDIENCE": "a",
        "REDIS_URL": "redis://10.0.0.5:6379/0",
        "FIRESTORE_PROJECT_ID": "p",
    }
}


def _values(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"config": dict(BASE["config"])}
    for key, value in extra.items():
        if key == "config":
            values["config"].update(value)
        else:
            values[key] = value
    return values


def _pods(profile: Rendered) -> dict[str, dict[str, Any]]:
    return dict(pod_specs(profile))


def _env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["containers"][0].get("env", [])}


def _mounts(pod: dict[str, Any]) -> dict[str, str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {
        m["mountPath"]: volumes[m["name"]].get("secret", {}).get("secretName", "")
        for m in pod["containers"][0].get("volumeMounts", [])
    }


# --- files where a setting names one -----------------------------------------------------------------
def test_every_setting_that_names_a_file_names_a_mounted_secret_file(profile: Rendered) -> None:
    for component, pod in _pods(profile).items():
        mounts = _mounts(pod)
        for name, entry in _env(pod).items():
            if name.endswith("_FILE") or name == "GOOGLE_APPLICATION_CREDENTIALS":
                path = entry["value"]
                assert any(path.startswith(m.rstrip("/") + "/") and s for m, s in mounts.items()), (
                    profile.profile,
                    component,
                    name,
                    path,
                )


def test_production_aws_mounts_fcm_credentials_in_the_consumer_alone() -> None:
    pods = _pods(rendered("production-aws"))
    consumer = pods["notification-consumer"]
    assert _env(consumer)["FCM_CREDENTIALS_FILE"]["value"] == "/var/run/secrets/chat/fcm/credentials.json"
    assert _mounts(consumer)["/var/run/secrets/chat/fcm"] == "chat-fcm"
    for component in ("upload", "message", "image-proxy", "cleanup"):
        assert "/var/run/secrets/chat/fcm" not in _mounts(pods[component]), component
        assert "FCM_CREDENTIALS_FILE" not in _env(pods[component]), component
        # Firestore credentials reach every pod that reads the message store.
        assert _env(pods[component])["GOOGLE_APPLICATION_CREDENTIALS"]["value"] == (
            "/var/run/secrets/chat/google/key.json"
        )


def test_the_apns_auth_key_is_mounted_in_the_consumer_alone() -> None:
    apns_config = {
        "PUSH_PROVIDER": "fcm,apns",
        "APNS_KEY_ID": "ABC123DEFG",
        "APNS_TEAM_ID": "TEAM456789",
        "APNS_TOPIC": "com.example.chat",
    }
    key = {
        "secretName": "chat-apns",
        "mountPath": "/var/run/secrets/chat/apns",
        "services": ["notification-consumer"],
        "env": {"APNS_KEY_FILE": "AuthKey.p8"},
    }
    pods = _pods(Rendered("apns", render_values(_values(config=apns_config, secretFiles={"apns": key}))))
    consumer = pods["notification-consumer"]
    assert _env(consumer)["APNS_KEY_FILE"]["value"] == "/var/run/secrets/chat/apns/AuthKey.p8"
    assert _mounts(consumer)["/var/run/secrets/chat/apns"] == "chat-apns"
    for component in ("upload", "message", "image-proxy"):
        assert "APNS_KEY_FILE" not in _env(pods[component]), component


def test_a_setting_naming_a_file_nothing_mounts_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="FCM_CREDENTIALS_FILE"):
        render_values(_values(config={"PUSH_PROVIDER": "fcm", "FCM_CREDENTIALS_FILE": "/nowhere/key.json"}))
    render_values(
        _values(
            config={"PUSH_PROVIDER": "fcm", "FCM_CREDENTIALS_FILE": "/var/run/fcm/key.json"},
            secretFiles={"fcm": {"secretName": "fcm", "mountPath": "/var/run/fcm"}},
        )
    )


def test_secret_variables_reach_only_the_pods_of_the_services_named() -> None:
    values = _values(
        secretEnv={
            "PUSH_WEBHOOK_SECRET": {"name": "push", "key": "k", "services": ["notification-consumer"]},
            "AWS_SECRET_ACCESS_KEY": {"name": "aws", "key": "k"},
        }
    )
    pods = _pods(Rendered("scoped", render_values(values)))
    for component, pod in pods.items():
        env = _env(pod)
        assert ("PUSH_WEBHOOK_SECRET" in env) == (component == "notification-consumer"), component
        assert "AWS_SECRET_ACCESS_KEY" in env, component


# --- network paths --------------------------------------------------------------------------------------
def _peers(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]


def test_gke_admits_googles_load_balancer_ranges_and_nothing_of_the_default_controller() -> None:
    profile = rendered("gateway-gke")
    for component in ("message", "image-proxy"):
        peers = _peers(profile.named("NetworkPolicy", component_name(component)))
        cidrs = {p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p}
        assert cidrs == {"35.191.0.0/16", "130.211.0.0/22"}
        # The chart's default ingress-nginx selector does not leak in (lists replace, maps would merge).
        assert "ingress-nginx" not in str(peers)


def test_gke_pods_reach_the_metadata_server_for_workload_identity() -> None:
    profile = rendered("gateway-gke")
    for policy in profile.of_kind("NetworkPolicy"):
        rules = policy["spec"]["egress"]
        reach = {
            (peer["ipBlock"]["cidr"], port["port"])
            for rule in rules
            for peer in rule.get("to", [])
            if "ipBlock" in peer
            for port in rule["ports"]
        }
        assert ("169.254.169.254/32", 80) in reach, policy["metadata"]["name"]
        assert ("169.254.169.252/32", 988) in reach, policy["metadata"]["name"]


def test_envoy_gateway_profile_admits_envoys_proxies() -> None:
    peers = _peers(rendered("gateway-envoy").named("NetworkPolicy", component_name("upload")))
    assert any(
        p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        == "envoy-gateway-system"
        for p in peers
    )


# --- autoscaling on the work ----------------------------------------------------------------------------
def test_production_consumer_scales_on_queue_depth_not_cpu() -> None:
    profile = rendered("production-aws")
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in profile.of_kind("HorizontalPodAutoscaler")}
    assert component_name("notification-consumer") not in hpas
    assert {component_name(c) for c in ("upload", "message", "image-proxy")} <= hpas
    (scaled,) = [
        o
        for o in profile.of_kind("ScaledObject")
        if o["spec"]["scaleTargetRef"]["name"] == component_name("notification-consumer")
    ]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"]["queueURL"].endswith("/chat-notifications")
    assert trigger["metadata"]["awsRegion"] == "ap-southeast-1"
    auth = profile.named("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "workload"}
    deployment = profile.named("Deployment", component_name("notification-consumer"))
    assert "replicas" not in deployment["spec"]  # KEDA owns the count


def test_any_queue_worker_in_values_gets_a_scaler() -> None:
    # A new worker is one values entry (its key is its serve target).
    queue = "https://sqs.eu-west-1.amazonaws.com/1/media"
    worker = {
        "enabled": True,
        "keda": {"enabled": True, "queueURL": queue, "awsRegion": "eu-west-1", "minReplicas": 0},
    }
    profile = Rendered("worker", render_values(_values(services={"media-processor": worker})))
    deployment = profile.named("Deployment", component_name("media-processor"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve", "media-processor"]
    scaled = profile.named("ScaledObject", component_name("media-processor"))
    assert scaled["spec"]["minReplicaCount"] == 0


def test_keda_without_a_queue_is_refused() -> None:
    with pytest.raises(helm.HelmError, match=r"keda\.queueURL"):
        render_values(
            _values(services={"notification-consumer": {"enabled": True, "keda": {"enabled": True}}})
        )


@pytest.mark.parametrize("name", PROFILES)
def test_every_container_has_requests_and_a_memory_limit(name: str) -> None:
    for component, pod in pod_specs(rendered(name)):
        for container in pod["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), (name, component)
            assert "memory" in resources.get("limits", {}), (name, component)


# --- the test profile ------------------------------------------------------------------------------------
def test_test_profile_images_are_pinned() -> None:
    for _, pod in pod_specs(rendered("test")):
        for container in pod["containers"]:
            image = container["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag, image
            assert tag != "latest", image
            assert not re.fullmatch(r"\d+", tag), image  # a major version floats
    localstack = rendered("test").named("Deployment", component_name("localstack"))
    assert localstack["spec"]["template"]["spec"]["containers"][0]["image"] == "localstack/localstack:4.14.0"


def test_localstack_is_ready_only_when_s3_and_sqs_answer() -> None:
    profile = rendered("test")
    pod = profile.named("Deployment", component_name("localstack"))["spec"]["template"]["spec"]
    probe = pod["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"] == ["sh", "/etc/chat-probe/ready.sh"]
    script = profile.named("ConfigMap", component_name("localstack-probe"))["data"]["ready.sh"]
    for needed in ("_localstack/health", "s3 sqs", 'answers "$base/"', "Action=ListQueues"):
        assert needed in script, needed


def _jwt_secret(values: dict[str, Any]) -> str:
    profile = Rendered("t", render_values(values))
    secret = profile.named("Secret", component_name("test-auth"))
    data: str = secret["data"]["jwt-secret"]
    return data


def test_test_profile_jwt_secret_is_the_one_given() -> None:
    given = "x" * 40
    values = {"testing": {"enabled": True, "jwtSecret": given}}
    assert _jwt_secret(values) == _jwt_secret(values)
    import base64

    assert base64.b64decode(_jwt_secret(values)).decode() == given


def test_every_localstack_image_is_pinned_to_4_14_0() -> None:
    """Later LocalStack images need an auth token: the chart, compose and the test harness pin 4.14.0."""
    root = Path(__file__).resolve().parents[2]
    sources = [root / "docker" / "compose.yaml", root / "tests" / "harness.py", root / "deploy" / "helm"]
    files = [p for s in sources for p in ([s] if s.is_file() else sorted(s.rglob("*.yaml")))]
    found = [
        (path.name, tag)
        for path in files
        for tag in re.findall(r"localstack/localstack:([\w.-]+)", path.read_text())
    ]
    assert found, "no LocalStack image reference found"
    assert {tag for _, tag in found} == {"4.14.0"}, found
