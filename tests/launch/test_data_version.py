"""The data version the DAG feeds into the curation steps' cache keys, and the S3 client built from
the project's own variables (no AWS_* in a step: KFP's launcher shares the container), both
against a real moto S3 server."""

from __future__ import annotations

import os
import uuid

import pytest

from dinoflow.config import load_config
from dinoflow.data import s3
from dinoflow.errors import DinoflowError
from dinoflow.launch.data_version import data_version


@pytest.fixture
def dinoflow_s3(s3_server, monkeypatch):
    """Only the DINOFLOW_S3_* names are set, as in a pipeline step; every AWS_* is gone."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", "/nonexistent")  # nor can a profile in ~/.aws stand in for the keys
    monkeypatch.setenv(s3.ENDPOINT_ENV, s3_server.endpoint)
    monkeypatch.setenv(s3.ACCESS_KEY_ENV, "testing")
    monkeypatch.setenv(s3.SECRET_KEY_ENV, "testing")
    monkeypatch.setenv("DINOFLOW_S3_MAX_ATTEMPTS", "1")
    bucket = f"pool-{uuid.uuid4().hex[:8]}"
    s3.s3_client().create_bucket(Bucket=bucket)
    return bucket


def _cfg(tmp_path, pool: str):
    p = tmp_path / "params.yaml"
    p.write_text(f"curate: {{sources: ['{pool}'], seeds: '', eval_sets: [], retrieval: none}}\n")
    return load_config(p, [])


def test_the_client_reads_the_project_names_not_aws(dinoflow_s3):
    client = s3.s3_client()
    assert client.meta.endpoint_url == os.environ[s3.ENDPOINT_ENV]
    client.put_object(Bucket=dinoflow_s3, Key="p/a.png", Body=b"x")  # a real signed request, no AWS_* anywhere
    assert s3.list_keys(f"s3://{dinoflow_s3}/p/") == ["p/a.png"]


def test_half_a_key_pair_is_refused_by_name(dinoflow_s3, monkeypatch):
    monkeypatch.delenv(s3.SECRET_KEY_ENV)
    with pytest.raises(DinoflowError, match="DINOFLOW_S3_SECRET_ACCESS_KEY is not set"):
        s3.s3_client()


def test_a_changed_pool_changes_the_version(dinoflow_s3, tmp_path):
    client = s3.s3_client()
    for i in range(3):
        client.put_object(Bucket=dinoflow_s3, Key=f"raw/{i}.png", Body=b"a" * 10)
    cfg = _cfg(tmp_path, f"s3://{dinoflow_s3}/raw/")
    v1 = data_version(cfg)
    assert v1.startswith("sha256:") and data_version(cfg) == v1  # same listing, same version
    client.put_object(Bucket=dinoflow_s3, Key="raw/1.png", Body=b"b" * 10)  # same key, same size, new bytes
    v2 = data_version(cfg)
    assert v2 != v1
    client.put_object(Bucket=dinoflow_s3, Key="raw/3.png", Body=b"c")  # one more object
    v3 = data_version(cfg)
    assert v3 not in (v1, v2)
    client.delete_object(Bucket=dinoflow_s3, Key="raw/3.png")
    assert data_version(cfg) == v2


def test_a_local_pool_version_follows_its_files(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.png").write_bytes(b"a" * 10)
    cfg = _cfg(tmp_path, str(pool))
    v1 = data_version(cfg)
    (pool / "b.png").write_bytes(b"b")
    assert data_version(cfg) != v1


def test_a_missing_local_input_is_left_to_the_plan_to_name(tmp_path):
    """The version step only digests; curate_plan's input check names a missing path with its key."""
    cfg = _cfg(tmp_path, str(tmp_path / "absent"))
    v1 = data_version(cfg)
    (tmp_path / "absent").mkdir()
    (tmp_path / "absent" / "a.png").write_bytes(b"a")
    assert data_version(cfg) != v1
