"""S3 reads that break mid-object (a real TCP proxy in front of moto_server resets the answer):
resumed from the byte they broke at, or failed by name — never an early end of the object."""

from __future__ import annotations

import urllib.parse

import numpy as np
import pytest
from tcp_proxy import CuttingProxy

from dinoflow.data import s3
from dinoflow.data.s3_read import ResumableBody
from dinoflow.errors import DinoflowError

CUT_AT = 50_000


@pytest.fixture
def obj(s3_server, monkeypatch, request):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DINOFLOW_S3_MAX_ATTEMPTS", "2")
    key = f"s3-read/{request.node.name}.bin"
    data = np.random.default_rng(0).bytes(200_000)
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=data)
    return key, data


def _proxy(s3_server, key: str, **kw) -> CuttingProxy:
    port = urllib.parse.urlparse(s3_server.endpoint).port
    return CuttingProxy(port, f"/{s3_server.bucket}/{key}".encode(), CUT_AT, **kw)


def test_a_read_broken_once_is_resumed_whole(s3_server, obj, monkeypatch):
    key, data = obj
    proxy = _proxy(s3_server, key, cuts=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        got = s3.read_bytes(f"s3://{s3_server.bucket}/{key}")
    finally:
        proxy.close()
    assert proxy.cut == 1 and got == data


def test_an_endpoint_that_dies_mid_read_is_a_named_error(s3_server, obj, monkeypatch):
    key, _ = obj
    proxy = _proxy(s3_server, key, die=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        with pytest.raises(DinoflowError, match=r"broke at byte \d+ of 200000 and failed 2 time\(s\) in a row"):
            s3.read_bytes(f"s3://{s3_server.bucket}/{key}")
    finally:
        proxy.close()
    assert proxy.cut == 1


def test_an_object_replaced_while_read_is_not_stitched(s3_server, obj, monkeypatch):
    key, data = obj
    proxy = _proxy(s3_server, key, cuts=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        body = ResumableBody(s3_server.bucket, key)
        first = body.read(1000)
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"another object" * 20_000)
        with pytest.raises(DinoflowError, match="changed while it was being read"):
            body.read()
        body.close()
    finally:
        proxy.close()
    assert first == data[:1000]
