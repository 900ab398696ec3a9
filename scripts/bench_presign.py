"""Presign cost per call: our S3ObjectStore (awscrt SigV4) against botocore's ``generate_presigned_url``.

    uv run python scripts/bench_presign.py [--calls 20000]

Signing is CPU only (no request is sent), so no S3 is needed. Both sign the same thing: a path-style
PUT with the content type and length in the signed headers, and a GET with a response-header override.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from botocore.config import Config
from botocore.session import get_session

from chat_core.aws import AwsCredentialSource, AwsHttp
from chat_core.objectstore.s3 import S3ObjectStore
from chat_core.settings import load_settings

ENDPOINT = "http://127.0.0.1:4566"
BUCKET = "bench-images"
KEY = "0f8e4c2a9b7d4e11/images/alice/20240419-123456-6c1f3f5e-2b7a-4a8e-9d0c-1e2f3a4b5c6d.jpg"


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    for _ in range(min(calls, 1000)):
        fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()

    settings = load_settings(
        {
            "AUTH_JWT_SECRET": "x" * 32,
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": BUCKET,
            "AWS_ENDPOINT_URL": ENDPOINT,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
        }
    )
    ours = S3ObjectStore(settings, http=AwsHttp(), credentials=AwsCredentialSource(settings.aws))
    boto = get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - LocalStack's dummy credentials; nothing is sent
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )

    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "PUT (type + length signed)",
            lambda: ours.presign_put(KEY, content_type="image/jpeg", content_length=102400, expires_in=3600),
            lambda: boto.generate_presigned_url(
                "put_object",
                Params={"Bucket": BUCKET, "Key": KEY, "ContentType": "image/jpeg", "ContentLength": 102400},
                ExpiresIn=3600,
            ),
        ),
        (
            "GET (cache-control override)",
            lambda: ours.presign_get(
                KEY, expires_in=600, response_headers={"Cache-Control": "private, max-age=300"}
            ),
            lambda: boto.generate_presigned_url(
                "get_object",
                Params={"Bucket": BUCKET, "Key": KEY, "ResponseCacheControl": "private, max-age=300"},
                ExpiresIn=600,
            ),
        ),
    ]
    print(f"presign, µs per call (median of 5 runs of {args.calls} calls)")
    print(f"{'':32} {'awscrt (ours)':>14} {'botocore':>10} {'ratio':>7}")
    for name, crt_call, boto_call in cases:
        crt_us = per_call_us(crt_call, args.calls)
        boto_us = per_call_us(boto_call, args.calls)
        print(f"{name:32} {crt_us:14.1f} {boto_us:10.1f} {boto_us / crt_us:6.1f}x")


if __name__ == "__main__":
    main()
