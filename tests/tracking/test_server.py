"""A tracking server lost in the middle of a stage: a named error within a bounded time, never a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from services import BIN, free_port, stop, wait_http

from dinoflow import tracking
from dinoflow.config import load_config
from dinoflow.errors import DinoflowError


@pytest.fixture
def doomed_server(tmp_path):
    """A real `mlflow server` of this test's own (SQLite, local artifacts), to be killed mid-run."""
    port = free_port()
    log = tmp_path / "mlflow.log"
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
    yield f"http://127.0.0.1:{port}", proc
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
