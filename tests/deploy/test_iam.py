"""Least-privilege IAM policies: one per service, no wildcards, scoped to the bucket and the queues."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness import ROOT

IAM = ROOT / "deploy" / "iam"
BUCKET = "arn:aws:s3:::BUCKET_NAME"
OBJECTS = "arn:aws:s3:::BUCKET_NAME/*"
QUEUE = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:QUEUE_NAME"
DLQ = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:DLQ_NAME"
# (action, resource) pairs each role may have, and no others.
EXPECTED = {
    "upload": {("s3:PutObject", OBJECTS), ("s3:ListBucket", BUCKET)},
    "message": {
        ("s3:GetObject", OBJECTS),
        ("s3:ListBucket", BUCKET),
        ("sqs:SendMessage", QUEUE),
        ("sqs:GetQueueUrl", QUEUE),
        ("sqs:GetQueueAttributes", QUEUE),
    },
    "image-proxy": {("s3:GetObject", OBJECTS), ("s3:ListBucket", BUCKET)},
    "notification-consumer": {
        ("sqs:ReceiveMessage", QUEUE),
        ("sqs:DeleteMessage", QUEUE),
        ("sqs:ChangeMessageVisibility", QUEUE),
        ("sqs:GetQueueAttributes", QUEUE),
        ("sqs:GetQueueUrl", QUEUE),
        ("sqs:GetQueueAttributes", DLQ),
        ("sqs:GetQueueUrl", DLQ),
    },
    "cleanup": {("s3:ListBucket", BUCKET), ("s3:DeleteObject", OBJECTS)},
}


def grants(policy: dict[str, Any]) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        pairs.update((action, resource) for action in actions for resource in resources)
    return pairs


def test_there_is_one_policy_per_service_and_the_cleanup_job() -> None:
    assert {p.stem for p in IAM.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_policy_grants_exactly_what_the_role_needs(role: str) -> None:
    policy = json.loads((IAM / f"{role}.json").read_text())
    assert policy["Version"] == "2012-10-17"
    assert grants(policy) == EXPECTED[role]


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_policy_has_no_wildcard_action_or_resource(role: str) -> None:
    for action, resource in grants(json.loads((IAM / f"{role}.json").read_text())):
        assert "*" not in action
        assert resource != "*"


def test_only_the_cleanup_job_may_delete_images() -> None:
    deleters = {
        role
        for role in EXPECTED
        if any(
            action == "s3:DeleteObject"
            for action, _ in grants(json.loads((IAM / f"{role}.json").read_text()))
        )
    }
    assert deleters == {"cleanup"}
