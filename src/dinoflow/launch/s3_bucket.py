"""Create the MLflow artifact bucket if it does not exist (the `create-bucket` init container in k8s/).

    python -m dinoflow.launch.s3_bucket s3://mlflow/artifacts --timeout-s 300

Idempotent: an existing bucket (ours) is fine. Waits for the S3 endpoint (`MLFLOW_S3_ENDPOINT_URL`,
else `AWS_ENDPOINT_URL`, else AWS) to answer — MinIO may still be starting — and gives up after
`--timeout-s`. Refused credentials fail at once: waiting would not fix them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from dinoflow.errors import DinoflowError

MISSING = ("404", "NoSuchBucket", "NotFound")
REFUSED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def bucket_of(destination: str) -> str:
    """`s3://bucket/prefix` → `bucket`; anything else is an error naming the value."""
    parsed = urlparse(destination)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise DinoflowError(f"the artifact destination must look like s3://bucket/prefix, got {destination!r}")
    return parsed.netloc


def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    # short timeouts and no client-side retries: this loop does the waiting
    cfg = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint or None, config=cfg)


def _create(s3, bucket: str) -> None:
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or ""
    if region and region != "us-east-1":  # AWS wants the region spelled out everywhere else
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        s3.create_bucket(Bucket=bucket)


def ensure_bucket(
    destination: str,
    *,
    endpoint: str | None = None,
    timeout_s: float = 300.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Make sure the bucket of `destination` exists; returns "exists" or "created"."""
    bucket = bucket_of(destination)
    s3 = _client(endpoint)
    deadline = clock() + timeout_s
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            return "exists"
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in REFUSED:
                raise DinoflowError(
                    f"S3 at {endpoint or 'AWS'} refused the credentials for bucket {bucket!r} ({code}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                ) from None
            if code not in MISSING:
                last = f"{code}: {e}"
            else:
                try:
                    _create(s3, bucket)
                    return "created"
                except ClientError as ce:
                    ccode = str(ce.response.get("Error", {}).get("Code", ""))
                    if ccode == "BucketAlreadyOwnedByYou":  # created by a concurrent start
                        return "exists"
                    if ccode == "BucketAlreadyExists":
                        raise DinoflowError(
                            f"bucket {bucket!r} exists and belongs to someone else; choose another "
                            "--artifacts-destination"
                        ) from None
                    last = f"{ccode}: {ce}"
        except BotoCoreError as e:  # endpoint not answering yet (connection refused, DNS, timeout)
            last = str(e)
        if clock() >= deadline:
            raise DinoflowError(
                f"S3 endpoint {endpoint or 'AWS'} did not let us create bucket {bucket!r} within "
                f"{timeout_s:.0f} s; last error: {last}"
            )
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dinoflow.launch.s3_bucket", description=__doc__.splitlines()[0])
    parser.add_argument("destination", help="s3://bucket/prefix (the MLflow server's --artifacts-destination)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    try:
        outcome = ensure_bucket(args.destination, endpoint=endpoint, timeout_s=args.timeout_s)
    except DinoflowError as e:
        print(f"create-bucket: {e}", file=sys.stderr)
        return 1
    print(f"create-bucket: bucket {bucket_of(args.destination)} {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
