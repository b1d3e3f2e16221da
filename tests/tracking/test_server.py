"""A tracking server lost in the middle of a stage: a named error within a bounded time, never a hang."""

from __future__ import annotations

import os
import signal
import time

import pytest
from services import spawn_mlflow, stop

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
