"""Every way of starting the stack gets the bucket ``setup`` makes.

The documents operators apply by hand (``deploy/bucket/``) are the ones ``setup`` applies; the chart's test
profile and the compose file run ``chat-management setup`` before the services need the bucket.
"""

from __future__ import annotations

import json

from chat_management import provision
from tests.deploy.conftest import component_name, load_yaml, rendered
from tests.harness import ROOT

DOCS = ROOT / "deploy" / "bucket"


def test_the_reviewed_documents_are_the_ones_setup_applies() -> None:
    assert provision.main([str(DOCS), "--check"]) == 0, "run: make docs"
    assert {p.name for p in DOCS.glob("*.json")} == set(provision.deploy_documents())


def test_the_readme_explains_every_document() -> None:
    readme = (DOCS / "README.md").read_text()
    for name in provision.deploy_documents():
        assert f"`{name}`" in readme, name


def test_the_policy_grants_nothing_and_covers_the_bucket_and_its_objects() -> None:
    policy = json.loads((DOCS / "bucket-policy.json").read_text())
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Deny"
        assert statement["Resource"] == ["arn:aws:s3:::BUCKET_NAME", "arn:aws:s3:::BUCKET_NAME/*"]


def test_lifecycle_and_notification_select_raw_uploads_only() -> None:
    lifecycle = json.loads((DOCS / "lifecycle.json").read_text())
    expiring = [rule for rule in lifecycle["Rules"] if "Expiration" in rule]
    # Raw uploads, the notes of why one was refused, and users' exports: never a derivative.
    assert [rule["Filter"] for rule in expiring] == [
        {"Prefix": "uploads/"},
        {"Prefix": "refused/"},
        {"Prefix": "_admin/exports/"},
    ]
    notification = json.loads((DOCS / "notification.json").read_text())
    (queue,) = notification["QueueConfigurations"]
    assert queue["Filter"]["Key"]["FilterRules"] == [{"Name": "Prefix", "Value": "uploads/"}]


SERVICES = ("upload", "message", "image-proxy", "notification-consumer", "media-processor")


def _env(container: dict[str, object]) -> dict[str, object]:
    entries = container["env"]
    assert isinstance(entries, list)
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in entries}


def test_the_chart_test_profile_runs_setup_with_the_services_environment() -> None:
    profile = rendered("test")
    # Part of the install itself (`helm install --wait` waits for the services, which wait for the bucket,
    # before post-install hooks run), named by revision: an upgrade makes a new Job, never patches one.
    job = profile.named("Job", component_name("setup") + "-1")
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["setup"]
    message = profile.named("Deployment", component_name("message"))["spec"]["template"]["spec"]
    own_name = {"OTEL_SERVICE_NAME"}
    setup_env, service_env = _env(container), _env(message["containers"][0])
    assert {k: v for k, v in setup_env.items() if k not in own_name} == {
        k: v for k, v in service_env.items() if k not in own_name
    }
    assert container["envFrom"] == message["containers"][0]["envFrom"]
    # No second way of making the bucket: LocalStack runs no init script.
    assert not [
        cm for cm in profile.of_kind("ConfigMap") if cm["metadata"]["name"].endswith("localstack-init")
    ]


def test_production_profiles_leave_the_bucket_to_its_owner() -> None:
    for name in ("default", "production-aws", "gateway-gke"):
        jobs = [job["metadata"]["name"] for job in rendered(name).of_kind("Job")]
        assert component_name("setup") not in jobs, name


def test_compose_runs_setup_before_any_service_starts() -> None:
    services = load_yaml(ROOT / "docker" / "compose.yaml")["services"]
    setup = services["setup"]
    assert setup["command"] == ["setup"]
    assert setup["image"] == services["message"]["image"]
    assert setup["environment"] == services["message"]["environment"]
    assert setup["depends_on"] == {"localstack": {"condition": "service_healthy"}}
    for name in SERVICES:
        assert services[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
    assert "volumes" not in services["localstack"]  # no init script making a bucket of its own
