"""A tracking server lost in the middle of a stage: a named error within a bounded time, never a hang."""

from __future__ import annotations

import os
import signal
import time

import pytest
from services import spawn_mlflow, start_moto, stop

from dinoflow import tracking
from dinoflow.config import load_config
from dinoflow.errors import DinoflowError


@pytest.fixture
def doomed_server(tmp_path):
    """A real `mlflow server` of this test's own (SQLite, local artifacts), to be killed mid-run."""
    uri, proc, _log = spawn_mlflow(
        tmp_path, f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "artifacts"), timeout_s=180
    )
    yield uri, proc
    stop(proc)


def _cfg(uri: str):
    return load_config(
        None,
        [
            f"tracking.tracking_uri={uri}",
            "tracking.system_metrics=false",
            "tracking.request_timeout_s=5",
            "tracking.request_retries=1",
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("last_call", ["log_artifact", "end_of_stage"])
def test_lost_server_is_a_named_error_within_bounds(workdir, doomed_server, last_call):
    uri, proc = doomed_server
    report = workdir / "report.csv"
    report.write_text("step,loss\n0,1.0\n")
    t0 = None
    with pytest.raises(DinoflowError, match=f"lost the MLflow tracking server {uri}") as err:
        with tracking.stage_run("pretrain", _cfg(uri)):
            tracking.log_metrics({"loss": 1.0}, step=0)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            t0 = time.monotonic()
            tracking.log_metrics({"loss": 0.5}, step=1)  # queued: never raises in the training loop
            if last_call == "log_artifact":
                tracking.log_artifact(report)
    assert time.monotonic() - t0 < 60, "bounded by tracking.request_timeout_s and request_retries"
    if last_call == "end_of_stage":
        assert "outputs are complete on disk" in str(err.value)
    assert tracking.active_run() is None


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_s3_dying_under_a_direct_upload_is_named_as_the_artifact_store(workdir, tmp_path, monkeypatch):
    """An experiment whose artifacts go to S3 from this process: S3 (a real moto_server) dies before an
    upload. The message names the S3 endpoint and the file, not a "lost tracking server"."""
    import mlflow

    s3 = start_moto(tmp_path)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # boto's own retries: keep the test short
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    mlflow.MlflowClient(uri).create_experiment("dinoflow", artifact_location=f"s3://{s3.bucket}/art")
    report = workdir / "report.csv"
    report.write_text("step,loss\n0,1.0\n")
    try:
        with pytest.raises(DinoflowError) as err:
            with tracking.stage_run("pretrain", _cfg(uri)):
                _kill(s3.proc)
                tracking.log_artifact(report)
    finally:
        stop(s3.proc)
    msg = str(err.value)
    assert f"logging artifact {report}: the S3 artifact store {s3.endpoint} failed" in msg, msg
    assert "the MLflow tracking server is not at fault" in msg and "lost the MLflow tracking server" not in msg


@pytest.mark.slow
def test_s3_dying_behind_a_proxying_server_is_named_as_its_artifact_store(workdir, tmp_path):
    """`mlflow server --serve-artifacts` to S3: S3 dies, the server stays up and answers 5xx for the upload.
    The message says the server answers and its artifact store failed."""
    s3 = start_moto(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(s3.env)
    uri, server, _log = spawn_mlflow(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", f"s3://{s3.bucket}/art", env)
    report = workdir / "report.csv"
    report.write_text("step,loss\n0,1.0\n")
    try:
        with pytest.raises(DinoflowError) as err:
            with tracking.stage_run("pretrain", _cfg(uri)):
                _kill(s3.proc)
                tracking.log_artifact(report)
        assert server.poll() is None, "the tracking server kept running"
    finally:
        stop(server)
        stop(s3.proc)
    msg = str(err.value)
    assert f"logging artifact {report}: the MLflow tracking server {uri} answers, but its artifact store failed" in msg
    assert "lost the MLflow tracking server" not in msg, msg
