"""The MLflow artifact bucket's init container (dinoflow.launch.s3_bucket) against a real S3 endpoint (moto_server)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from services import DUMMY_AWS, free_port, start_moto, stop

from dinoflow.errors import DinoflowError
from dinoflow.launch.s3_bucket import bucket_of, ensure_bucket


@pytest.fixture
def aws(monkeypatch):
    for k, v in DUMMY_AWS.items():
        monkeypatch.setenv(k, v)


def test_bucket_is_created_once_then_found(s3_server, aws):
    dest = "s3://mlflow-artifacts-init/artifacts"
    assert ensure_bucket(dest, endpoint=s3_server.endpoint) == "created"
    assert ensure_bucket(dest, endpoint=s3_server.endpoint) == "exists"  # idempotent: a restarted pod is fine
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "mlflow-artifacts-init" in names


def test_the_init_container_command_runs(s3_server):
    env = {**os.environ, **DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint}
    cmd = [sys.executable, "-m", "dinoflow.launch.s3_bucket", "s3://bucket-from-cli/a/b", "--timeout-s", "30"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "bucket bucket-from-cli created" in out.stdout


def test_an_endpoint_that_never_answers_times_out_with_the_reason(aws):
    port = free_port()  # nothing listens there
    with pytest.raises(DinoflowError, match=rf"127.0.0.1:{port} did not let us create bucket 'b' within 1 s"):
        ensure_bucket("s3://b/x", endpoint=f"http://127.0.0.1:{port}", timeout_s=1.0, poll_s=0.2)


def test_refused_credentials_fail_at_once(tmp_path, aws):
    server = start_moto(tmp_path, bucket=None, require_auth=True)
    try:
        with pytest.raises(DinoflowError, match="refused the credentials"):
            ensure_bucket("s3://b/x", endpoint=server.endpoint, timeout_s=60.0)
    finally:
        stop(server.proc)


@pytest.mark.parametrize("bad", ["mlflow/artifacts", "s3:///artifacts", "file:///tmp/x", ""])
def test_only_s3_destinations_are_accepted(bad):
    with pytest.raises(DinoflowError, match="s3://bucket/prefix"):
        bucket_of(bad)
