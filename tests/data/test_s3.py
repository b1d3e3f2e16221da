"""S3 helpers against a real moto server: endpoint override, listing, and the errors users see."""

from __future__ import annotations

import socket
import urllib.request

import boto3
import pytest

from dinoflow.data import s3
from dinoflow.errors import DinoflowError


def test_parse_s3_url():
    assert s3.parse_s3_url("s3://bkt/a/b/") == s3.S3Url("bkt", "a/b/")
    assert s3.parse_s3_url("s3://bkt") == s3.S3Url("bkt", "")
    assert str(s3.parse_s3_url("s3://bkt/k")) == "s3://bkt/k"
    with pytest.raises(DinoflowError, match="no bucket"):
        s3.parse_s3_url("s3:///key")
    with pytest.raises(DinoflowError, match="not an S3 URL"):
        s3.parse_s3_url("/local/path")


def test_client_honours_endpoint_env(s3_env, monkeypatch):
    assert s3.s3_client().meta.endpoint_url == s3_env
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")  # the S3-specific variable wins
    assert s3.s3_client().meta.endpoint_url == "http://127.0.0.1:1"


def test_list_read_write(bucket):
    for key in ["p/b.png", "p/a.png", "p/sub/c.tar", "p/dir/", "q/x.png", "pp/y.png"]:
        s3.write_bytes(f"s3://{bucket}/{key}", key.encode())
    assert s3.list_keys(f"s3://{bucket}/p/") == ["p/a.png", "p/b.png", "p/sub/c.tar"]  # no folder marker
    assert s3.list_keys(f"s3://{bucket}/p/", suffixes=(".tar",)) == ["p/sub/c.tar"]
    assert s3.list_keys(f"s3://{bucket}") == sorted(["p/b.png", "p/a.png", "p/sub/c.tar", "q/x.png", "pp/y.png"])
    assert s3.read_bytes(f"s3://{bucket}/q/x.png") == b"q/x.png"
    body = s3.open_stream(f"s3://{bucket}/p/a.png")
    assert body.read(3) == b"p/a" and body.read() == b".png"
    body.close()


def test_listing_follows_continuation_tokens(bucket):
    client = s3.s3_client()
    for i in range(25):
        client.put_object(Bucket=bucket, Key=f"m/{24 - i:05d}.png", Body=b"")
    keys = s3.list_keys(f"s3://{bucket}/m/", page_size=10)  # 3 requests
    assert keys == [f"m/{i:05d}.png" for i in range(25)]


def test_missing_bucket(s3_env):
    with pytest.raises(DinoflowError, match=r"bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1"):
        s3.list_keys("s3://no-such-bucket/x/")


def test_missing_key(bucket):
    with pytest.raises(DinoflowError, match="not found"):
        s3.read_bytes(f"s3://{bucket}/nope.png")


def test_unreachable_endpoint(s3_env, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(
        DinoflowError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:\d+ for bucket 'b'.*AWS_ENDPOINT_URL"
    ):
        s3.list_keys("s3://b/prefix/")


def test_missing_credentials(s3_env, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DinoflowError, match="no usable S3 credentials for bucket 'b'.*AWS_ACCESS_KEY_ID"):
        s3.list_keys("s3://b/")


@pytest.fixture
def moto_auth(s3_env, bucket):
    """Turn on moto's IAM authentication for one test, with one real IAM access key (then turn it off)."""
    iam = boto3.client("iam", endpoint_url=s3_env, region_name="us-east-1")
    user = f"reader-{bucket}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def set_auth(count: str) -> None:
        req = urllib.request.Request(
            f"{s3_env}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(req, timeout=5).read()

    set_auth("0")  # every request from now on must carry valid credentials
    try:
        yield key
    finally:
        set_auth("inf")


def test_bad_credentials_are_named(bucket, moto_auth, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(DinoflowError) as ei:
        s3.list_keys(f"s3://{bucket}/x/")
    msg = str(ei.value)
    assert f"S3 rejected the credentials for bucket '{bucket}'" in msg
    assert "InvalidAccessKeyId" in msg and "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in msg
    assert "wrong" not in msg  # never echo the secret


def test_wrong_secret_is_named(bucket, moto_auth, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(
        DinoflowError, match=f"S3 rejected the credentials for bucket '{bucket}'.*SignatureDoesNotMatch"
    ):
        s3.read_bytes(f"s3://{bucket}/x.png")


def test_valid_key_without_permission_is_access_denied(bucket, moto_auth, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_auth["SecretAccessKey"])
    with pytest.raises(DinoflowError, match="access denied.*may read this bucket"):
        s3.list_keys(f"s3://{bucket}/")
