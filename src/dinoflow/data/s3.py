"""S3 access for data sources and shards: one client factory, URL parsing, and clear errors.

The project's data store is named by its own variables, `DINOFLOW_S3_ENDPOINT_URL`,
`DINOFLOW_S3_ACCESS_KEY_ID`, `DINOFLOW_S3_SECRET_ACCESS_KEY` (and `DINOFLOW_S3_REGION`), and the
client is built from them explicitly. Why not `AWS_*`: in a Kubeflow step the KFP launcher runs in
the same container and its own S3 client reads `AWS_*`, so setting them for dinoflow's MinIO would
send KFP's artifact traffic there too. Where the DINOFLOW_ names are unset (a laptop, a CI runner),
the endpoint falls back to `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` and the credentials to
boto3's usual chain (env vars, profile, instance role).
Every botocore failure is turned into a `DinoflowError` that names the bucket and what to fix.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, TypedDict

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from dinoflow.errors import DinoflowError

CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
MISSING_BUCKET_CODES = {"NoSuchBucket"}
MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}

ENDPOINT_ENV = "DINOFLOW_S3_ENDPOINT_URL"
ACCESS_KEY_ENV = "DINOFLOW_S3_ACCESS_KEY_ID"
SECRET_KEY_ENV = "DINOFLOW_S3_SECRET_ACCESS_KEY"
REGION_ENV = "DINOFLOW_S3_REGION"
_ENV_KEYS = (
    ENDPOINT_ENV,
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    REGION_ENV,
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
_clients: dict[tuple[str | None, ...], Any] = {}


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # may be "" (the whole bucket) or a prefix

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_url(text: str) -> bool:
    return str(text).startswith("s3://")


def parse_s3_url(url: str) -> S3Url:
    """`s3://bucket/some/prefix` → S3Url(bucket="bucket", key="some/prefix")."""
    if not is_s3_url(url):
        raise DinoflowError(f"{url!r} is not an S3 URL: expected s3://bucket/prefix")
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise DinoflowError(f"{url!r} has no bucket name: expected s3://bucket/prefix")
    return S3Url(bucket, key)


def endpoint_url() -> str | None:
    """The S3 endpoint override from the environment, or None for AWS itself."""
    for name in (ENDPOINT_ENV, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return None


class Credentials(TypedDict, total=False):
    """boto3 client keyword arguments for an explicit key pair."""

    aws_access_key_id: str
    aws_secret_access_key: str


def explicit_credentials() -> Credentials:
    """The `DINOFLOW_S3_*` key pair as boto3 client arguments, or {} (boto3's chain decides).
    One of the two without the other is a configuration mistake, refused before any request."""
    key, secret = os.environ.get(ACCESS_KEY_ENV, ""), os.environ.get(SECRET_KEY_ENV, "")
    if bool(key) != bool(secret):
        missing = SECRET_KEY_ENV if key else ACCESS_KEY_ENV
        raise DinoflowError(
            f"{missing} is not set but its partner is: set both {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} "
            "(the `dinoflow-s3` secret on a cluster) or neither"
        )
    return {"aws_access_key_id": key, "aws_secret_access_key": secret} if key else {}


def s3_client() -> Any:
    """A boto3 S3 client for the current environment (cached per endpoint/credential env vars).

    Path-style addressing is used with a custom endpoint, since MinIO and moto do not serve
    virtual-host bucket names on 127.0.0.1. Region defaults to us-east-1 when none is set.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    env = tuple(os.environ.get(k) for k in _ENV_KEYS)
    client = _clients.get(env)
    if client is not None:
        return client
    endpoint = endpoint_url()
    region = (
        os.environ.get(REGION_ENV)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    config = BotoConfig(
        retries={"max_attempts": int(os.environ.get("DINOFLOW_S3_MAX_ATTEMPTS", "3")), "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region, config=config, **explicit_credentials()
    )
    _clients[env] = client
    return client


def _credential_names() -> str:
    """The variables the client took its keys from, for error messages."""
    if os.environ.get(ACCESS_KEY_ENV) or os.environ.get(SECRET_KEY_ENV):
        return f"{ACCESS_KEY_ENV}/{SECRET_KEY_ENV}"
    return "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"


@contextmanager
def s3_errors(bucket: str, what: str = "") -> Iterator[None]:
    """Translate botocore failures inside the block into a DinoflowError about `bucket`."""
    where = endpoint_url() or "AWS S3"
    doing = f" while {what}" if what else ""
    try:
        yield
    except ClientError as e:
        raise s3_error_from_client_error(e, bucket, what) from None
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise DinoflowError(
            f"no usable S3 credentials for bucket {bucket!r}{doing} ({e}): "
            f"set {ACCESS_KEY_ENV}/{SECRET_KEY_ENV} (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
        ) from None
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
        raise DinoflowError(
            f"cannot reach the S3 endpoint {where} for bucket {bucket!r}{doing} ({e}): "
            f"check {ENDPOINT_ENV} (or AWS_ENDPOINT_URL) and that the server is running"
        ) from None
    except BotoCoreError as e:
        raise DinoflowError(f"S3 request for bucket {bucket!r}{doing} failed at {where}: {e}") from None


def s3_error_from_client_error(e: Any, bucket: str, what: str = "") -> DinoflowError:
    """Map a botocore ClientError to a DinoflowError that says what to fix."""
    err = e.response.get("Error", {}) if hasattr(e, "response") else {}
    code = str(err.get("Code", ""))
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if hasattr(e, "response") else None
    doing = f" while {what}" if what else ""
    where = endpoint_url() or "AWS S3"
    if code in CREDENTIAL_CODES:
        return DinoflowError(
            f"S3 rejected the credentials for bucket {bucket!r}{doing} ({code}): check {_credential_names()}"
        )
    if code in DENIED_CODES or status == 403:
        return DinoflowError(
            f"S3 rejected the credentials for bucket {bucket!r}{doing} ({code or 403}: access denied): "
            f"check {_credential_names()} and that they may read this bucket"
        )
    if code in MISSING_BUCKET_CODES:
        return DinoflowError(f"S3 bucket {bucket!r} does not exist at {where}{doing}: create it or fix the s3:// URL")
    if code in MISSING_KEY_CODES or status == 404:
        return DinoflowError(f"S3 object not found in bucket {bucket!r}{doing} ({code or 404}): check the s3:// URL")
    return DinoflowError(f"S3 request for bucket {bucket!r}{doing} failed ({code}): {err.get('Message', e)}")


@dataclass(frozen=True)
class S3Object:
    """One listed object: what identifies its content without reading it (the ETag changes with it)."""

    key: str
    size: int
    etag: str


def iter_objects(url: str, *, page_size: int = 1000) -> Iterator[S3Object]:
    """Every object under an s3:// prefix with its size and ETag, in the server's listing order
    (S3 lists keys in UTF-8 byte order), one page in memory at a time ("folder" markers left out).

    The bucket must exist (a missing bucket is an error, an empty prefix yields nothing).
    Listing follows continuation tokens, `page_size` keys per request.
    """
    u = parse_s3_url(url)
    client = s3_client()
    with s3_errors(u.bucket, f"listing {url}"):
        paginator = client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=u.bucket, Prefix=u.key, PaginationConfig={"PageSize": page_size})
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    yield S3Object(obj["Key"], int(obj.get("Size", -1)), str(obj.get("ETag", "")).strip('"'))


def list_objects(url: str, *, page_size: int = 1000) -> list[S3Object]:
    """`iter_objects` as a list sorted by key."""
    return sorted(iter_objects(url, page_size=page_size), key=lambda o: o.key)


def list_keys(url: str, suffixes: tuple[str, ...] | None = None, *, page_size: int = 1000) -> list[str]:
    """All object keys under an s3:// prefix, sorted; optionally only those ending in `suffixes`."""
    keys = [o.key for o in list_objects(url, page_size=page_size)]
    return keys if suffixes is None else [k for k in keys if k.lower().endswith(suffixes)]


def open_stream(url: str) -> Any:
    """A readable stream over one object (`.read(n)`, `.close()`); a read that breaks is resumed
    from where it broke, then fails by name (`dinoflow.data.s3_read`), never ends early."""
    from dinoflow.data.s3_read import ResumableBody

    u = parse_s3_url(url)
    return ResumableBody(u.bucket, u.key)


def read_bytes(url: str) -> bytes:
    """The whole object as bytes (a broken read resumed, see `open_stream`)."""
    body = open_stream(url)
    try:
        return body.read()
    finally:
        body.close()


def write_bytes(url: str, data: bytes) -> None:
    """Upload bytes to one object (a single PUT is atomic on S3: readers see old or new, never half)."""
    u = parse_s3_url(url)
    with s3_errors(u.bucket, f"writing {url}"):
        s3_client().put_object(Bucket=u.bucket, Key=u.key, Body=data)
