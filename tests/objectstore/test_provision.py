"""One owner of cloud provisioning: what ``chat-management setup`` leaves is what the workers' settings need.

LocalStack in S3 mode (signature checks on): setup runs as the chart's Job and compose run it, then every
attribute is read back (bucket policy, encryption, lifecycle, CORS, notification, ownership, public access
block, each queue's attributes and redrive policy) and compared with what the services derive from the same
settings (the ``JobKind`` each queue adapter is built from, the processor's job timeout), never with the
provisioning module's own documents. Settings differ from the defaults on purpose, and the two queues'
limits differ from each other, so a value taken from the wrong setting shows.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from chat_core import keys
from chat_core.composition import Composition
from chat_core.jobqueue import JobKind
from chat_core.media_jobs import media_jobs
from chat_core.notifications import notification_jobs
from chat_core.settings import Settings
from tests import harness
from tests.conftest import TEST_SECRET, make_settings, unique
from tests.harness import ROOT

pytestmark = pytest.mark.localstack

ORIGIN = "https://chat.example"
FOURTEEN_DAYS = 14 * 24 * 3600


def _env(localstack: harness.Backend, data_dir: Path) -> dict[str, str]:
    notifications = unique("prov-notifications")
    return {
        "OBJECT_STORE": "s3",
        "NOTIFICATION_QUEUE": "sqs",
        "S3_BUCKET_NAME": unique("prov"),
        "MEDIA_QUEUE_NAME": unique("prov-media"),
        "SQS_QUEUE_NAME": notifications,
        "SQS_DLQ_NAME": notifications + "-dead",
        "AWS_ENDPOINT_URL": localstack.address,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "CORS_ALLOW_ORIGINS": ORIGIN,
        "DATA_DIR": str(data_dir),
        # What the workers run with: a slower decode bound, and limits the two queues do not share.
        "MEDIA_JOB_TIMEOUT_SECONDS": "45",
        "MEDIA_MAX_RECEIVES": "3",
        "NOTIFICATION_MAX_RECEIVES": "6",
        "NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS": "40",
        "RAW_UPLOAD_EXPIRY_DAYS": "4",
    }


def _setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_management", "setup"],
        env={**os.environ, "AUTH_JWT_SECRET": TEST_SECRET, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class ReadBack:
    """Everything setup wrote, as AWS reports it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Plain boto3, not the provisioning module's clients: the reading is independent of the writing.
        self.s3, self.sqs = (
            boto3.client(
                service,
                endpoint_url=settings.aws.endpoint_url,
                region_name=settings.aws.region,
                aws_access_key_id=settings.aws.access_key_id,
                aws_secret_access_key=settings.aws.secret_access_key,
                config=Config(s3={"addressing_style": "path"}),
            )
            for service in ("s3", "sqs")
        )
        self.bucket = settings.s3.bucket

    def queue(self, name: str) -> dict[str, str]:
        url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attributes: dict[str, str] = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
            "Attributes"
        ]
        return attributes


@pytest.fixture(scope="module")
def provisioned(localstack: harness.Backend, tmp_path_factory: pytest.TempPathFactory) -> ReadBack:
    env = _env(localstack, tmp_path_factory.mktemp("provision"))
    result = _setup(env)
    assert result.returncode == 0, result.stderr
    return ReadBack(make_settings(env["DATA_DIR"], env))


def _assert_queue_as_its_workers_need(read: ReadBack, kind: JobKind[Any], longest_run: float) -> None:
    main, dead = read.queue(kind.queue_name), read.queue(kind.dlq_name)
    assert int(main["VisibilityTimeout"]) == kind.visibility_timeout_seconds, kind.name
    assert int(main["VisibilityTimeout"]) > longest_run, kind.name  # a running job never reappears
    redrive = json.loads(main["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dead["QueueArn"], kind.name
    assert int(redrive["maxReceiveCount"]) == kind.max_receives, kind.name
    for attributes in (main, dead):
        assert int(attributes["MessageRetentionPeriod"]) == FOURTEEN_DAYS, kind.name
        assert attributes["SqsManagedSseEnabled"] == "true", kind.name
    allowed = json.loads(dead["RedriveAllowPolicy"])
    assert allowed == {"redrivePermission": "byQueue", "sourceQueueArns": [main["QueueArn"]]}, kind.name


def test_the_media_queue_hides_a_job_for_longer_than_the_processor_can_run_it(provisioned: ReadBack) -> None:
    """30 s (SQS's default, what the old bucket step left) would hand a 45 s decode to a second worker."""
    settings = provisioned.settings
    # The processor takes two jobs per image worker: one can wait a whole job timeout, then decode.
    waited_then_decoded = 2 * settings.media.job_timeout_seconds
    _assert_queue_as_its_workers_need(provisioned, media_jobs(settings), waited_then_decoded)
    assert int(provisioned.queue(settings.media.queue_name)["VisibilityTimeout"]) >= 90 + 60  # with transfers


def test_the_notification_queue_is_as_the_consumer_is_configured(provisioned: ReadBack) -> None:
    settings = provisioned.settings
    kind = notification_jobs(settings)
    assert (kind.max_receives, kind.visibility_timeout_seconds) == (6, 40)
    _assert_queue_as_its_workers_need(provisioned, kind, 0)


def test_only_this_bucket_may_send_to_the_media_queue(provisioned: ReadBack) -> None:
    media = provisioned.queue(provisioned.settings.media.queue_name)
    (statement,) = json.loads(media["Policy"])["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == media["QueueArn"]
    assert statement["Condition"]["ArnEquals"] == {"aws:SourceArn": f"arn:aws:s3:::{provisioned.bucket}"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": media["QueueArn"].split(":")[4]}
    notifications = provisioned.queue(provisioned.settings.notifications.queue_name)
    assert "Policy" not in notifications  # nothing but the services' own roles send notifications


def test_the_bucket_announces_raw_uploads_and_nothing_else_on_the_media_queue(provisioned: ReadBack) -> None:
    configuration = provisioned.s3.get_bucket_notification_configuration(Bucket=provisioned.bucket)
    (ours,) = configuration["QueueConfigurations"]
    assert ours["QueueArn"] == provisioned.queue(provisioned.settings.media.queue_name)["QueueArn"]
    assert ours["Events"] == ["s3:ObjectCreated:*"]
    (rule,) = ours["Filter"]["Key"]["FilterRules"]
    assert rule["Name"].lower() == "prefix"
    assert rule["Value"] == keys.RAW_UPLOAD_PREFIX


def test_the_bucket_is_private_encrypted_and_tls_only(provisioned: ReadBack) -> None:
    s3, bucket = provisioned.s3, provisioned.bucket
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    conditions = {statement["Sid"]: statement["Condition"] for statement in policy["Statement"]}
    assert {statement["Effect"] for statement in policy["Statement"]} == {"Deny"}
    assert conditions["DenyInsecureTransport"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert conditions["DenyTlsOlderThan12"] == {"NumericLessThan": {"s3:TlsVersion": "1.2"}}
    assert conditions["DenyAnonymousPrincipals"] == {"StringEquals": {"aws:PrincipalType": "Anonymous"}}
    for statement in policy["Statement"]:
        assert statement["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    (encryption,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert encryption["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}


def test_cors_lets_the_web_clients_origin_put_with_the_presigned_url(provisioned: ReadBack) -> None:
    (rule,) = provisioned.s3.get_bucket_cors(Bucket=provisioned.bucket)["CORSRules"]
    assert rule["AllowedOrigins"] == list(provisioned.settings.service.cors_allow_origins)
    assert {"PUT", "GET"} <= set(rule["AllowedMethods"])
    assert rule["ExposeHeaders"] == ["ETag"]


def test_lifecycle_expires_raw_uploads_and_refusal_notes_after_the_send_window(provisioned: ReadBack) -> None:
    settings = provisioned.settings
    rules = provisioned.s3.get_bucket_lifecycle_configuration(Bucket=provisioned.bucket)["Rules"]
    expiring = {
        rule["Filter"]["Prefix"]: rule["Expiration"]["Days"] for rule in rules if "Expiration" in rule
    }
    raw = keys.stored_key("c1", keys.new_object_key("alice", "image/png"))
    assert raw.startswith(keys.RAW_UPLOAD_PREFIX)
    assert keys.refusal_key(raw).startswith(keys.REFUSAL_PREFIX)
    # Operators' exports expire after EXPORT_EXPIRY_DAYS (the retention job deletes them too).
    exports = {keys.EXPORT_PREFIX: settings.lifecycle.export_expiry_days}
    assert expiring == {keys.RAW_UPLOAD_PREFIX: 4, keys.REFUSAL_PREFIX: 4, **exports}
    # Never within the window a send may still use the upload (or ask why it was refused).
    assert settings.images.orphan_grace_seconds < 4 * 86400
    aborts = [rule for rule in rules if "AbortIncompleteMultipartUpload" in rule]
    assert [rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for rule in aborts] == [1]


async def test_the_services_adapters_use_what_setup_made(provisioned: ReadBack) -> None:
    backends = Composition(provisioned.settings)
    queues = (backends.notification_queue, backends.media_queue)
    store = backends.object_store
    async with backends:
        await store.ping()
        for queue in queues:
            await queue.ping()
            assert (await queue.depth())[1] == 0  # its dead-letter queue answers too (S3's test event aside)


def test_a_settings_change_is_brought_in_line_by_running_setup_again(
    localstack: harness.Backend, tmp_path: Path
) -> None:
    env = _env(localstack, tmp_path)
    assert _setup(env).returncode == 0
    slower = {**env, "MEDIA_JOB_TIMEOUT_SECONDS": "100", "MEDIA_MAX_RECEIVES": "8"}
    again = _setup(slower)
    assert again.returncode == 0, again.stderr
    assert "(applied)" in next(line for line in again.stdout.splitlines() if "media queue" in line)
    read = ReadBack(make_settings(tmp_path, slower))
    _assert_queue_as_its_workers_need(read, media_jobs(read.settings), 2 * 100)


# --- one writer ------------------------------------------------------------------------------------------
# Requests that create or configure a bucket or a queue, as boto3 names them and as the services' own
# AWS clients spell them (operation names, S3 sub-resources).
_WRITES = (
    "create_queue",
    "set_queue_attributes",
    "create_bucket",
    "put_bucket_",
    "delete_bucket_cors",
    "CreateQueue",
    "SetQueueAttributes",
    "?cors",
    "?lifecycle",
    "?policy",
    "?notification",
    "?encryption",
)


def _writers(root: Path) -> set[str]:
    found: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings say, not do
        for node in ast.walk(tree):
            if id(node) in prose:
                continue
            text = (
                node.value
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                else node.attr
                if isinstance(node, ast.Attribute)
                else ""
            )
            if any(write in text for write in _WRITES):
                found.add(str(path.relative_to(ROOT)))
    return found


def test_nothing_but_the_provisioning_module_writes_a_bucket_or_a_queue() -> None:
    """Before, three writers disagreed: the S3 adapter, the SQS adapter and the bucket step of setup."""
    writers: set[str] = set()
    for tree in ("libs", "services", "src", "tools"):
        writers |= _writers(ROOT / tree)
    assert writers == {"src/chat_management/provision.py"}


def test_setup_talks_to_the_endpoints_the_services_use(tmp_path: Path) -> None:
    """The per-service overrides win over AWS_ENDPOINT_URL for setup as for the adapters (before: ignored)."""
    from chat_management import provision

    settings = make_settings(
        tmp_path,
        {
            "AWS_ENDPOINT_URL": "http://aws.example:4566",
            "AWS_ENDPOINT_URL_S3": "http://s3-only.example:9000",
            "AWS_ENDPOINT_URL_SQS": "http://sqs-only.example:9324",
        },
    )
    s3, sqs = provision.clients(settings)
    assert (s3.meta.endpoint_url, sqs.meta.endpoint_url) == (
        "http://s3-only.example:9000",
        "http://sqs-only.example:9324",
    )
