"""The one owner of cloud provisioning: the bucket and both queues, as the services' settings require.

``chat-management setup`` runs :func:`provision`; the chart's setup Job, compose's ``setup`` service and the
dev stack run that command, and the tests call :func:`provision` (nothing else creates or configures a
bucket or a queue: the services' adapters only use them, with roles that may not create them). Each step
reads the current configuration first and writes only what differs (boto3, standard retry mode), so a
second run changes nothing and a run after a settings change brings everything in line.

Everything is derived from the settings the workers read:

* the bucket (``OBJECT_STORE=s3``): object ownership ``BucketOwnerEnforced`` (ACLs off), the four-flag
  public access block, a policy denying plain HTTP, TLS older than 1.2, anonymous principals and public
  canned ACLs, default encryption (SSE-S3, or SSE-KMS with ``S3_KMS_KEY_ID``, S3 Bucket Key on), the
  browser-upload CORS rule (``CORS_ALLOW_ORIGINS``), a lifecycle (abort incomplete multipart uploads after a
  day; raw uploads ``uploads/`` and refusal notes ``refused/`` expire after ``RAW_UPLOAD_EXPIRY_DAYS``, a
  backstop behind the media pipeline and the orphan cleanup; users' exports ``_admin/exports/`` after
  ``EXPORT_EXPIRY_DAYS``, as the retention pass does), and the object-created notification for
  ``uploads/`` to the media queue when it is on SQS (docs/adr/0005-raw-upload-prefix.md explains the
  prefix; with the SQLite queue nothing would read what S3 sent, and uploads are checked at send);
* with ``NOTIFICATION_QUEUE=sqs``, the notification and the media queue, each from the ``JobKind`` its
  adapter is built from (``notification_jobs``/``media_jobs``): the visibility timeout (the media
  queue's is derived from the media job's longest run, ``MediaSettings.longest_job_seconds``), redrive to
  its dead-letter queue after the kind's max receives, 14 days' retention, SQS-managed encryption; the
  dead-letter queue accepts redrives from its own queue only; with S3 the media queue's policy lets this
  bucket (and only it) send.

The reviewed copies in ``deploy/bucket/`` are these same documents rendered with placeholders (``python -m
chat_management.provision deploy/bucket``, run by ``make docs``; a test keeps them in step), for operators
whose infrastructure code makes the bucket and the queues.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_core.jobqueue import JobKind
from chat_core.keys import EXPORT_PREFIX, RAW_UPLOAD_PREFIX, REFUSAL_PREFIX
from chat_core.media_jobs import media_jobs
from chat_core.notifications import notification_jobs
from chat_core.objectstore.s3 import CORS_ALLOWED_METHODS, CORS_MAX_AGE_SECONDS
from chat_core.settings import Settings

__all__ = [
    "ABORT_MULTIPART_AFTER_DAYS",
    "NOTIFICATION_ID",
    "QUEUE_RETENTION_SECONDS",
    "BucketSpec",
    "Plan",
    "QueueSpec",
    "bucket_policy",
    "clients",
    "cors",
    "encryption",
    "lifecycle",
    "notification",
    "ownership_controls",
    "provision",
    "provision_queue",
    "public_access_block",
    "queue_policy",
    "steps",
]

ABORT_MULTIPART_AFTER_DAYS = 1
NOTIFICATION_ID = "chat-management-raw-uploads"  # ours among the bucket's notifications
QUEUE_RETENTION_SECONDS = 14 * 24 * 3600  # the SQS maximum: a job outlives a long consumer outage
PUBLIC_CANNED_ACLS = ["public-read", "public-read-write", "authenticated-read"]
_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
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


def lifecycle(expiry_days: int, export_expiry_days: int) -> JsonDict:
    rules: list[JsonDict] = [
        {
            "ID": "abort-incomplete-multipart-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_AFTER_DAYS},
        }
    ]
    if expiry_days:
        # Only raw uploads and the notes of why one was refused: derivatives ({cid}/media/...) never start
        # with these prefixes. A note lives as long as its upload could have: a send within the window
        # still gets its 413/422 (the settings refuse an expiry within ORPHAN_GRACE_SECONDS).
        for rule_id, prefix in (
            ("expire-raw-uploads", RAW_UPLOAD_PREFIX),
            ("expire-refusal-notes", REFUSAL_PREFIX),
        ):
            rules.append(
                {
                    "ID": rule_id,
                    "Status": "Enabled",
                    "Filter": {"Prefix": prefix},
                    "Expiration": {"Days": expiry_days},
                }
            )
    # Users' exports: the retention pass deletes them after EXPORT_EXPIRY_DAYS; this rule does it even where
    # no retention pass runs (RETENTION_INTERVAL_SECONDS=0 and no CronJob).
    rules.append(
        {
            "ID": "expire-user-exports",
            "Status": "Enabled",
            "Filter": {"Prefix": EXPORT_PREFIX},
            "Expiration": {"Days": export_expiry_days},
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


def queue_policy(queue_arn: str, bucket: str) -> JsonDict:
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
class QueueSpec:
    """One queue and its dead-letter queue, from the ``JobKind`` its adapter uses."""

    role: str  # "notification" or "media"
    name: str
    dlq_name: str
    visibility_timeout_seconds: int
    max_receives: int
    sender_bucket: str = ""  # the bucket whose events it receives (the media queue with S3)

    @classmethod
    def of(cls, kind: JobKind[Any], *, sender_bucket: str = "") -> QueueSpec:
        return cls(
            role=kind.name,
            name=kind.queue_name,
            dlq_name=kind.dlq_name,
            visibility_timeout_seconds=kind.visibility_timeout_seconds,
            max_receives=kind.max_receives,
            sender_bucket=sender_bucket,
        )

    def attributes(self, arn: str, dlq_arn: str) -> dict[str, str]:
        attributes = {
            "VisibilityTimeout": str(self.visibility_timeout_seconds),
            "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS),
            "SqsManagedSseEnabled": "true",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.max_receives}
            ),
        }
        if self.sender_bucket:
            attributes["Policy"] = json.dumps(queue_policy(arn, self.sender_bucket))
        return attributes

    def dlq_attributes(self, arn: str) -> dict[str, str]:
        return {
            "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS),
            "SqsManagedSseEnabled": "true",
            # Only its own queue may move messages here: a dead letter's origin is never in doubt.
            "RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [arn]}),
        }


@dataclass(frozen=True)
class BucketSpec:
    name: str
    region: str
    cors_origins: tuple[str, ...]
    kms_key_id: str
    expiry_days: int  # raw uploads and refusal notes; 0: no expiry rule
    export_expiry_days: int  # users' exports


@dataclass(frozen=True)
class Plan:
    """What ``setup`` makes exist for these settings (nothing for the embedded adapters)."""

    bucket: BucketSpec | None
    queues: tuple[QueueSpec, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Plan:
        s3 = settings.backends.object_store == "s3"
        bucket = (
            BucketSpec(
                name=settings.s3.bucket,
                region=settings.aws.region,
                cors_origins=settings.service.cors_allow_origins,
                kms_key_id=settings.s3.kms_key_id,
                expiry_days=settings.s3.raw_upload_expiry_days,
                export_expiry_days=settings.lifecycle.export_expiry_days,
            )
            if s3
            else None
        )
        queues: tuple[QueueSpec, ...] = ()
        if settings.backends.notification_queue == "sqs":
            queues = (
                QueueSpec.of(notification_jobs(settings)),
                QueueSpec.of(media_jobs(settings), sender_bucket=settings.s3.bucket if s3 else ""),
            )
        return cls(bucket, queues)

    @property
    def media_queue(self) -> QueueSpec | None:
        return next((queue for queue in self.queues if queue.role == "media"), None)


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


def same_attribute(current: Any, wanted: str) -> bool:
    """Whether a queue attribute as SQS reports it is the one wanted (JSON ones compared as documents)."""
    if current is None:
        return False
    if wanted.startswith("{"):
        try:
            return _contains(json.loads(current), json.loads(wanted))
        except ValueError:
            return False
    return str(current) == wanted


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
    """boto3 S3 and SQS clients at the endpoints the services use (static keys when set, else the chain)."""
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
    return (
        session.client("s3", endpoint_url=aws.s3_endpoint_url or aws.endpoint_url or None, config=config),
        session.client("sqs", endpoint_url=aws.sqs_endpoint_url or aws.endpoint_url or None, config=config),
    )


def _bucket_steps(spec: BucketSpec, s3: Any) -> list[Step]:
    bucket = spec.name

    def ensure_bucket() -> str:
        try:
            s3.head_bucket(Bucket=bucket)
            return "exists"
        except Exception as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        create: JsonDict = {"Bucket": bucket}
        if spec.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            create["CreateBucketConfiguration"] = {"LocationConstraint": spec.region}
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
        wanted = encryption(spec.kms_key_id)
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
        wanted = cors(spec.cors_origins)
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
        wanted = lifecycle(spec.expiry_days, spec.export_expiry_days)
        current = _read(
            lambda: {"Rules": s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]},
            "NoSuchLifecycleConfiguration",
        )
        return _converge(
            current,
            wanted,
            lambda: s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=wanted),
        )

    encryption_kind = f"SSE-KMS with key {spec.kms_key_id}" if spec.kms_key_id else "SSE-S3"
    expiry = (
        f"{RAW_UPLOAD_PREFIX} and {REFUSAL_PREFIX} expire after {spec.expiry_days} d"
        if spec.expiry_days
        else "no raw-upload expiry"
    )
    expiry += f", {EXPORT_PREFIX} after {spec.export_expiry_days} d"
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
    ]


def _queue_step(spec: QueueSpec, sqs: Any, arns: dict[str, str]) -> Step:
    def existing_or_new(name: str) -> tuple[str, bool]:
        url = _read(lambda: sqs.get_queue_url(QueueName=name)["QueueUrl"], *_MISSING_QUEUE)
        if url is not None:
            return str(url), False
        return str(sqs.create_queue(QueueName=name)["QueueUrl"]), True

    def bring_in_line(url: str, wanted: dict[str, str]) -> tuple[str, bool]:
        """(the queue's ARN, whether anything was written)."""
        current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        stale = {key: value for key, value in wanted.items() if not same_attribute(current.get(key), value)}
        if stale:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=stale)
        return str(current["QueueArn"]), bool(stale)

    def arn_of(url: str) -> str:
        return str(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        )

    def ensure_queue() -> str:
        # Both exist before either's attributes are written: each names the other's ARN.
        dlq_url, dlq_created = existing_or_new(spec.dlq_name)
        url, created = existing_or_new(spec.name)
        arn, dlq_arn = arn_of(url), arn_of(dlq_url)
        _, changed = bring_in_line(url, spec.attributes(arn, dlq_arn))
        _, dlq_changed = bring_in_line(dlq_url, spec.dlq_attributes(arn))
        arns[spec.role] = arn
        if created or dlq_created:
            return "created"
        return "applied" if changed or dlq_changed else "unchanged"

    senders = ", bucket may send" if spec.sender_bucket else ""
    return (
        f"{spec.role} queue (sqs): {spec.name} (visibility {spec.visibility_timeout_seconds} s) and "
        f"{spec.dlq_name} after {spec.max_receives} receives{senders}",
        ensure_queue,
    )


def _notification_step(bucket: str, s3: Any, arns: dict[str, str]) -> Step:
    def ensure_notification() -> str:
        if "media" not in arns:
            raise RuntimeError("the media queue step did not succeed")
        wanted = notification(arns["media"])
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

    return (
        f"bucket: object-created notification for {RAW_UPLOAD_PREFIX} to the media queue",
        ensure_notification,
    )


def steps(plan: Plan, s3: Any, sqs: Any) -> list[Step]:
    """One idempotent step per thing to make, in order; each returns what it did (``created``, ...)."""
    arns: dict[str, str] = {}  # filled by the queue steps, read by the notification step
    result: list[Step] = []
    if plan.bucket is not None:
        result += _bucket_steps(plan.bucket, s3)
    result += [_queue_step(queue, sqs, arns) for queue in plan.queues]
    if plan.bucket is not None and plan.media_queue is not None:
        # With the SQLite queue the workers would never read what S3 sent: uploads are checked at send.
        result.append(_notification_step(plan.bucket.name, s3, arns))
    return result


def provision(settings: Settings) -> list[tuple[str, str]]:
    """Make the bucket and the queues these settings use what they must be; (step, what it did) each."""
    plan = Plan.from_settings(settings)
    s3, sqs = clients(settings) if plan.bucket or plan.queues else (None, None)
    return [(what, step()) for what, step in steps(plan, s3, sqs)]


def provision_queue(settings: Settings, kind: JobKind[Any]) -> str:
    """One queue of ``kind`` (and its dead-letter queue), as ``provision`` makes the settings' own."""
    _, sqs = clients(settings)
    _, ensure = _queue_step(QueueSpec.of(kind), sqs, {})
    return ensure()


# --- the reviewed copies in deploy/bucket ---------------------------------------------------------------
PLACEHOLDER_BUCKET = "BUCKET_NAME"
PLACEHOLDER_QUEUE_ARN = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:MEDIA_QUEUE_NAME"
PLACEHOLDER_DLQ_ARN = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:MEDIA_QUEUE_NAME-dlq"
PLACEHOLDER_NOTIFICATION_QUEUE_ARN = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:QUEUE_NAME"
PLACEHOLDER_NOTIFICATION_DLQ_ARN = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:DLQ_NAME"
PLACEHOLDER_KMS_KEY = "KMS_KEY_ID"
PLACEHOLDER_ORIGIN = "https://chat.example.com"


def _queue_attributes(spec: QueueSpec, arn: str, dlq_arn: str) -> JsonDict:
    return {"queue": spec.attributes(arn, dlq_arn), "dead-letter queue": spec.dlq_attributes(arn)}


def deploy_documents() -> dict[str, JsonDict]:
    """File name -> document, as ``deploy/bucket/`` holds them (placeholders in capitals)."""
    defaults = Settings()
    cors_rule = cors((PLACEHOLDER_ORIGIN,))
    assert cors_rule is not None
    media = QueueSpec.of(media_jobs(defaults), sender_bucket=PLACEHOLDER_BUCKET)
    notifications = QueueSpec.of(notification_jobs(defaults))
    return {
        "public-access-block.json": public_access_block(),
        "ownership-controls.json": ownership_controls(),
        "bucket-policy.json": bucket_policy(PLACEHOLDER_BUCKET),
        "encryption-sse-s3.json": encryption(""),
        "encryption-sse-kms.json": encryption(PLACEHOLDER_KMS_KEY),
        "cors.json": cors_rule,
        "lifecycle.json": lifecycle(
            defaults.s3.raw_upload_expiry_days, defaults.lifecycle.export_expiry_days
        ),
        "notification.json": {"QueueConfigurations": [notification(PLACEHOLDER_QUEUE_ARN)]},
        "media-queue-policy.json": queue_policy(PLACEHOLDER_QUEUE_ARN, PLACEHOLDER_BUCKET),
        "media-queue-attributes.json": _queue_attributes(media, PLACEHOLDER_QUEUE_ARN, PLACEHOLDER_DLQ_ARN),
        "notification-queue-attributes.json": _queue_attributes(
            notifications, PLACEHOLDER_NOTIFICATION_QUEUE_ARN, PLACEHOLDER_NOTIFICATION_DLQ_ARN
        ),
    }


def render(document: JsonDict) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write (or --check) the documents of deploy/bucket")
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
