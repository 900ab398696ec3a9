"""The hardened bucket: every document ``chat-management setup`` applies to it, rendered in one place.

``setup`` applies them with boto3 (standard retry mode), each step reading the bucket's current
configuration first and writing only what differs, so a second run changes nothing. The reviewed copies in
``deploy/bucket/`` are these same documents rendered with placeholders (``python -m
chat_management.bucket deploy/bucket``; a test keeps them in step), for operators whose buckets are made
by their own infrastructure code.

What a bucket gets (docs/adr/0005-raw-upload-prefix.md explains the ``uploads/`` prefix):

* object ownership ``BucketOwnerEnforced`` (ACLs off) and the four-flag public access block;
* a policy denying plain-HTTP requests, TLS older than 1.2, anonymous principals and public canned ACLs;
* default encryption: SSE-S3, or SSE-KMS with ``S3_KMS_KEY_ID`` (S3 Bucket Key on);
* the browser-upload CORS rule (the spec's methods, ``CORS_ALLOW_ORIGINS``);
* lifecycle: abort incomplete multipart uploads after a day; expire raw uploads (``uploads/``) after
  ``RAW_UPLOAD_EXPIRY_DAYS``, a backstop behind the media pipeline and the orphan cleanup;
* the media queue (``MEDIA_QUEUE_NAME``) with its dead-letter queue and a policy letting this bucket
  (and only it) send to it, and the bucket's object-created notification for ``uploads/`` to that queue.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_core.keys import RAW_UPLOAD_PREFIX
from chat_core.objectstore.s3 import CORS_ALLOWED_METHODS, CORS_MAX_AGE_SECONDS
from chat_core.settings import Settings

__all__ = [
    "ABORT_MULTIPART_AFTER_DAYS",
    "NOTIFICATION_ID",
    "BucketConfiguration",
    "bucket_policy",
    "cors",
    "encryption",
    "lifecycle",
    "media_queue_policy",
    "notification",
    "ownership_controls",
    "public_access_block",
    "setup_steps",
]

ABORT_MULTIPART_AFTER_DAYS = 1
NOTIFICATION_ID = "chat-management-raw-uploads"  # ours among the bucket's notifications
MEDIA_RETENTION_SECONDS = 14 * 24 * 3600  # the SQS maximum, as for the notification queue
PUBLIC_CANNED_ACLS = ["public-read", "public-read-write", "authenticated-read"]
JsonDict = dict[str, Any]


# --- the documents ------------------------------------------------------------------------------------
def public_access_block() -> JsonDict:
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def ownership_controls() -> JsonDict:
    return {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def bucket_policy(bucket: str) -> JsonDict:
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]

    def deny(sid: str, action: str | list[str], condition: JsonDict) -> JsonDict:
        return {
            "Sid": sid,
            "Effect": "Deny",
            "Principal": "*",
            "Action": action,
            "Resource": resources,
            "Condition": condition,
        }

    return {
        "Version": "2012-10-17",
        "Statement": [
            deny("DenyInsecureTransport", "s3:*", {"Bool": {"aws:SecureTransport": "false"}}),
            deny("DenyTlsOlderThan12", "s3:*", {"NumericLessThan": {"s3:TlsVersion": "1.2"}}),
            deny("DenyAnonymousPrincipals", "s3:*", {"StringEquals": {"aws:PrincipalType": "Anonymous"}}),
            deny(
                "DenyPublicCannedAcls",
                ["s3:PutBucketAcl", "s3:PutObject", "s3:PutObjectAcl"],
                {"StringEquals": {"s3:x-amz-acl": PUBLIC_CANNED_ACLS}},
            ),
        ],
    }


def encryption(kms_key_id: str) -> JsonDict:
    if kms_key_id:
        rule: JsonDict = {
            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_id},
            # One data key per bucket and period instead of one KMS call per object.
            "BucketKeyEnabled": True,
        }
    else:
        rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    return {"Rules": [rule]}


def cors(origins: tuple[str, ...]) -> JsonDict | None:
    """The browser-upload rule (the spec's), or None when CORS is off (no rule at all)."""
    if not origins:
        return None
    return {
        "CORSRules": [
            {
                "AllowedHeaders": ["*"],
                "AllowedMethods": list(CORS_ALLOWED_METHODS),
                "AllowedOrigins": list(origins),
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": CORS_MAX_AGE_SECONDS,
            }
        ]
    }


def lifecycle(raw_upload_expiry_days: int) -> JsonDict:
    rules: list[JsonDict] = [
        {
            "ID": "abort-incomplete-multipart-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_AFTER_DAYS},
        }
    ]
    if raw_upload_expiry_days:
        rules.append(
            {
                # Only raw uploads: derivatives ({cid}/media/...) never start with this prefix.
                "ID": "expire-raw-uploads",
                "Status": "Enabled",
                "Filter": {"Prefix": RAW_UPLOAD_PREFIX},
                "Expiration": {"Days": raw_upload_expiry_days},
            }
        )
    return {"Rules": rules}


def notification(queue_arn: str) -> JsonDict:
    """Our queue configuration: every object created under ``uploads/`` is announced on the media queue."""
    return {
        "Id": NOTIFICATION_ID,
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": RAW_UPLOAD_PREFIX}]}},
    }


def media_queue_policy(queue_arn: str, bucket: str) -> JsonDict:
    """S3 may send this bucket's events to the queue, and only this bucket's (no confused deputy)."""
    account = queue_arn.split(":")[4]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BucketObjectCreatedEvents",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {
                    "ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                    "StringEquals": {"aws:SourceAccount": account},
                },
            }
        ],
    }


@dataclass(frozen=True)
class BucketConfiguration:
    """What ``setup`` makes the bucket look like, from the settings."""

    bucket: str
    region: str
    cors_origins: tuple[str, ...]
    kms_key_id: str
    raw_upload_expiry_days: int
    media_queue: str
    media_dlq: str
    max_receives: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BucketConfiguration:
        return cls(
            bucket=settings.s3.bucket,
            region=settings.aws.region,
            cors_origins=settings.service.cors_allow_origins,
            kms_key_id=settings.s3.kms_key_id,
            raw_upload_expiry_days=settings.s3.raw_upload_expiry_days,
            media_queue=settings.media.queue_name,
            media_dlq=settings.media.queue_name + "-dlq",
            max_receives=settings.notifications.max_receives,
        )


# --- applying them ------------------------------------------------------------------------------------
def _contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` (what AWS reports) says all that ``wanted`` says; AWS adds defaults of its own.

    Lists must match in length: ``setup`` owns the policy, CORS and lifecycle configurations (a rule
    added by hand is replaced on the next run); notifications of other ids are the exception, kept.
    """
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            key in actual and _contains(actual[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    if isinstance(wanted, str) and isinstance(actual, str):
        # Notification filter rule names come back as `Prefix` or `prefix` depending on who wrote them.
        return actual == wanted or (actual.lower() == wanted.lower() and wanted in ("Prefix", "Suffix"))
    return bool(actual == wanted)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _read(call: Callable[[], Any], *missing: str) -> Any:
    """``call()``, or None when AWS answers with one of the ``missing`` codes (nothing configured yet)."""
    try:
        return call()
    except Exception as exc:
        if _error_code(exc) in missing:
            return None
        raise


def _converge(current: Any, wanted: Any, write: Callable[[], Any]) -> str:
    if current is not None and _contains(current, wanted):
        return "unchanged"
    write()
    return "applied"


Step = tuple[str, Callable[[], str]]


def clients(settings: Settings) -> tuple[Any, Any]:
    """boto3 S3 and SQS clients for ``setup`` (static keys when set, else the default chain)."""
    import boto3
    from botocore.config import Config

    aws = settings.aws
    session = boto3.session.Session(
        aws_access_key_id=aws.access_key_id or None,
        aws_secret_access_key=aws.secret_access_key or None,
        aws_session_token=aws.session_token or None,
        region_name=aws.region,
    )
    config = Config(
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=5,
        read_timeout=30,
        s3={"addressing_style": "path"},  # as the hot path: one code path for AWS, LocalStack, MinIO
    )
    endpoint = aws.endpoint_url or None
    return (
        session.client("s3", endpoint_url=endpoint, config=config),
        session.client("sqs", endpoint_url=endpoint, config=config),
    )


def setup_steps(config: BucketConfiguration, s3: Any, sqs: Any) -> list[Step]:
    """One idempotent step per part of the bucket; each returns what it did (``created``, ``unchanged``…)."""
    bucket = config.bucket
    media_queue_arn: list[str] = []  # filled by the queue step, read by the notification step

    def ensure_bucket() -> str:
        try:
            s3.head_bucket(Bucket=bucket)
            return "exists"
        except Exception as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        create: JsonDict = {"Bucket": bucket}
        if config.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            create["CreateBucketConfiguration"] = {"LocationConstraint": config.region}
        s3.create_bucket(**create)
        return "created"

    def ensure_ownership() -> str:
        current = _read(
            lambda: s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"],
            "OwnershipControlsNotFoundError",
        )
        return _converge(
            current,
            ownership_controls(),
            lambda: s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=ownership_controls()),
        )

    def ensure_public_access_block() -> str:
        current = _read(
            lambda: s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"],
            "NoSuchPublicAccessBlockConfiguration",
        )
        return _converge(
            current,
            public_access_block(),
            lambda: s3.put_public_access_block(
                Bucket=bucket, PublicAccessBlockConfiguration=public_access_block()
            ),
        )

    def ensure_policy() -> str:
        wanted = bucket_policy(bucket)
        current = _read(
            lambda: json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]), "NoSuchBucketPolicy"
        )
        return _converge(
            current, wanted, lambda: s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(wanted))
        )

    def ensure_encryption() -> str:
        wanted = encryption(config.kms_key_id)
        current = _read(
            lambda: s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"],
            "ServerSideEncryptionConfigurationNotFoundError",
        )
        return _converge(
            current,
            wanted,
            lambda: s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=wanted),
        )

    def ensure_cors() -> str:
        wanted = cors(config.cors_origins)
        current = _read(
            lambda: {"CORSRules": s3.get_bucket_cors(Bucket=bucket)["CORSRules"]}, "NoSuchCORSConfiguration"
        )
        if wanted is None:
            if current is None:
                return "unchanged (CORS off)"
            s3.delete_bucket_cors(Bucket=bucket)
            return "removed (CORS off)"
        return _converge(current, wanted, lambda: s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=wanted))

    def ensure_lifecycle() -> str:
        wanted = lifecycle(config.raw_upload_expiry_days)
        current = _read(
            lambda: {"Rules": s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]},
            "NoSuchLifecycleConfiguration",
        )
        return _converge(
            current,
            wanted,
            lambda: s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=wanted),
        )

    def queue(name: str, attributes: dict[str, str]) -> tuple[str, str, bool]:
        """(url, arn, changed) of the queue ``name`` with ``attributes``, created or brought in line."""
        url = _read(
            lambda: sqs.get_queue_url(QueueName=name)["QueueUrl"],
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        )
        changed = url is None
        if url is None:
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        stale = {
            key: value for key, value in attributes.items() if not _same_attribute(current.get(key), value)
        }
        if stale:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=stale)
            changed = True
        return url, str(current["QueueArn"]), changed

    def ensure_media_queue() -> str:
        retention = {"MessageRetentionPeriod": str(MEDIA_RETENTION_SECONDS)}
        _, dlq_arn, dlq_changed = queue(config.media_dlq, retention)
        # The queue's ARN names the account its policy is scoped to: make the queue first, then its policy.
        _, arn, created = queue(config.media_queue, retention)
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": config.max_receives}
        policy = media_queue_policy(arn, bucket)
        _, _, changed = queue(
            config.media_queue,
            {**retention, "RedrivePolicy": json.dumps(redrive), "Policy": json.dumps(policy)},
        )
        media_queue_arn.append(arn)
        return "applied" if dlq_changed or created or changed else "unchanged"

    def ensure_notification() -> str:
        if not media_queue_arn:
            raise RuntimeError("the media queue step did not succeed")
        wanted = notification(media_queue_arn[0])
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        current.pop("ResponseMetadata", None)
        ours = [q for q in current.get("QueueConfigurations", []) if q.get("Id") == NOTIFICATION_ID]
        if len(ours) == 1 and _contains(ours[0], wanted):
            return "unchanged"
        # The call replaces the whole configuration: keep every notification that is not ours.
        others = [q for q in current.get("QueueConfigurations", []) if q.get("Id") != NOTIFICATION_ID]
        configuration = {**current, "QueueConfigurations": [*others, wanted]}
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=configuration)
        return "applied"

    encryption_kind = f"SSE-KMS with key {config.kms_key_id}" if config.kms_key_id else "SSE-S3"
    expiry = (
        f"raw uploads expire after {config.raw_upload_expiry_days} d"
        if config.raw_upload_expiry_days
        else "no raw-upload expiry"
    )
    return [
        (f"object store (s3): bucket {bucket}", ensure_bucket),
        ("bucket: object ownership enforced (ACLs off)", ensure_ownership),
        ("bucket: public access block (all four flags)", ensure_public_access_block),
        ("bucket: policy (TLS only, no anonymous or public access)", ensure_policy),
        (f"bucket: default encryption ({encryption_kind})", ensure_encryption),
        ("bucket: browser-upload CORS rule", ensure_cors),
        (
            f"bucket: lifecycle (abort incomplete multipart uploads after {ABORT_MULTIPART_AFTER_DAYS} d, "
            f"{expiry})",
            ensure_lifecycle,
        ),
        (
            f"media queue (sqs): {config.media_queue} and {config.media_dlq}, bucket may send",
            ensure_media_queue,
        ),
        (
            f"bucket: object-created notification for {RAW_UPLOAD_PREFIX} to the media queue",
            ensure_notification,
        ),
    ]


def _same_attribute(current: Any, wanted: str) -> bool:
    if current is None:
        return False
    if wanted.startswith("{"):
        try:
            return _contains(json.loads(current), json.loads(wanted))
        except ValueError:
            return False
    return str(current) == wanted


# --- the reviewed copies in deploy/bucket ---------------------------------------------------------------
PLACEHOLDER_BUCKET = "BUCKET_NAME"
PLACEHOLDER_QUEUE_ARN = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:MEDIA_QUEUE_NAME"
PLACEHOLDER_KMS_KEY = "KMS_KEY_ID"
PLACEHOLDER_ORIGIN = "https://chat.example.com"
DEFAULT_EXPIRY_DAYS = Settings().s3.raw_upload_expiry_days


def deploy_documents() -> dict[str, JsonDict]:
    """File name -> document, as ``deploy/bucket/`` holds them (placeholders in capitals)."""
    cors_rule = cors((PLACEHOLDER_ORIGIN,))
    assert cors_rule is not None
    return {
        "public-access-block.json": public_access_block(),
        "ownership-controls.json": ownership_controls(),
        "bucket-policy.json": bucket_policy(PLACEHOLDER_BUCKET),
        "encryption-sse-s3.json": encryption(""),
        "encryption-sse-kms.json": encryption(PLACEHOLDER_KMS_KEY),
        "cors.json": cors_rule,
        "lifecycle.json": lifecycle(DEFAULT_EXPIRY_DAYS),
        "notification.json": {"QueueConfigurations": [notification(PLACEHOLDER_QUEUE_ARN)]},
        "media-queue-policy.json": media_queue_policy(PLACEHOLDER_QUEUE_ARN, PLACEHOLDER_BUCKET),
    }


def render(document: JsonDict) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write (or --check) the bucket documents of deploy/bucket")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, document in deploy_documents().items():
        path = args.directory / name
        if path.exists() and path.read_text() == render(document):
            continue
        stale.append(path)
        if not args.check:
            path.write_text(render(document))
    if args.check and stale:
        print(f"stale: {', '.join(map(str, stale))} (run: make docs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
