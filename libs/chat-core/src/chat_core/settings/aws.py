"""AWS credentials and endpoints, the bucket (S3) and the queues' long poll (SQS)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from chat_core.settings.base import Frozen, env


class AwsSettings(Frozen, frozen=True, kw_only=True):
    region: Annotated[
        str, env("AWS_REGION", "AWS region of the bucket and queues (else `AWS_DEFAULT_REGION`).")
    ] = "us-east-1"
    access_key_id: Annotated[
        str,
        env("AWS_ACCESS_KEY_ID", "Static credentials; empty uses the default chain (IRSA, profile, IMDS)."),
    ] = ""
    secret_access_key: Annotated[str, env("AWS_SECRET_ACCESS_KEY", "Secret for AWS_ACCESS_KEY_ID.")] = ""
    session_token: Annotated[str, env("AWS_SESSION_TOKEN", "Session token for temporary credentials.")] = ""
    endpoint_url: Annotated[
        str, env("AWS_ENDPOINT_URL", "Override the AWS endpoint (LocalStack); empty means real AWS.")
    ] = ""
    s3_endpoint_url: Annotated[
        str, env("AWS_ENDPOINT_URL_S3", "Override the S3 endpoint alone (wins over AWS_ENDPOINT_URL).")
    ] = ""
    sqs_endpoint_url: Annotated[
        str, env("AWS_ENDPOINT_URL_SQS", "Override the SQS endpoint alone (wins over AWS_ENDPOINT_URL).")
    ] = ""


class S3Settings(Frozen, frozen=True, kw_only=True):
    bucket: Annotated[
        str, env("S3_BUCKET_NAME", "Bucket holding the images (required with OBJECT_STORE=s3).")
    ] = ""
    public_endpoint_url: Annotated[
        str,
        env(
            "S3_PUBLIC_ENDPOINT_URL",
            "Endpoint presigned URLs point at (what clients reach). Default: AWS_ENDPOINT_URL.",
        ),
    ] = ""
    kms_key_id: Annotated[
        str,
        env(
            "S3_KMS_KEY_ID",
            "`setup`: default encryption is SSE-KMS with this key (id, ARN or alias); empty: SSE-S3.",
        ),
    ] = ""
    raw_upload_expiry_days: Annotated[
        int,
        env(
            "RAW_UPLOAD_EXPIRY_DAYS",
            "`setup`: lifecycle backstop deleting raw uploads (`uploads/`) this old; 0: no such rule.",
        ),
        msgspec.Meta(ge=0),
    ] = 7


class SqsSettings(Frozen, frozen=True, kw_only=True):
    wait_seconds: Annotated[
        int, env("SQS_WAIT_SECONDS", "Long-poll wait of one receive."), msgspec.Meta(ge=0, le=20)
    ] = 10
