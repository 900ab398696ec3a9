"""The bucket documents operators apply by hand (``deploy/bucket/``) are the ones ``setup`` applies."""

from __future__ import annotations

import json

from chat_management import bucket
from tests.harness import ROOT

DOCS = ROOT / "deploy" / "bucket"


def test_the_reviewed_documents_are_the_ones_setup_applies() -> None:
    assert bucket.main([str(DOCS), "--check"]) == 0, "run: make docs"
    assert {p.name for p in DOCS.glob("*.json")} == set(bucket.deploy_documents())


def test_the_readme_explains_every_document() -> None:
    readme = (DOCS / "README.md").read_text()
    for name in bucket.deploy_documents():
        assert f"`{name}`" in readme, name


def test_the_policy_grants_nothing_and_covers_the_bucket_and_its_objects() -> None:
    policy = json.loads((DOCS / "bucket-policy.json").read_text())
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Deny"
        assert statement["Resource"] == ["arn:aws:s3:::BUCKET_NAME", "arn:aws:s3:::BUCKET_NAME/*"]


def test_lifecycle_and_notification_select_raw_uploads_only() -> None:
    lifecycle = json.loads((DOCS / "lifecycle.json").read_text())
    expiring = [rule for rule in lifecycle["Rules"] if "Expiration" in rule]
    assert [rule["Filter"] for rule in expiring] == [{"Prefix": "uploads/"}]
    notification = json.loads((DOCS / "notification.json").read_text())
    (queue,) = notification["QueueConfigurations"]
    assert queue["Filter"]["Key"]["FilterRules"] == [{"Name": "Prefix", "Value": "uploads/"}]
