"""Runs left open by a lost tracking server are ended FAILED at the next start: the real `mlflow server`
killed (SIGKILL) under a real `dinoflow register`, then started again on the same store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from services import free_port, spawn_mlflow, stop

from dinoflow.digest import file_sha256
from dinoflow.models import build_backbone, export_backbone
from dinoflow.tracking.unclosed import TAG_CLOSED, close_remembered, remember

BIN = Path(sys.executable).parent


def test_a_remembered_run_is_ended_failed_once_and_forgotten(workdir, monkeypatch):
    uri = f"sqlite:///{workdir}/m.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("unclosed")
    left, done = client.create_run(exp), client.create_run(exp)
    client.set_terminated(done.info.run_id, "FINISHED")
    remember(uri, [left.info.run_id, done.info.run_id], "the MLflow run of stage 'register'")
    remember("sqlite:///elsewhere.db", ["not-this-server"], "another server's run")
    assert close_remembered(client, uri) == [left.info.run_id]
    run = client.get_run(left.info.run_id)
    assert run.info.status == "FAILED" and "stage 'register' lost the server" in run.data.tags[TAG_CLOSED]
    assert client.get_run(done.info.run_id).info.status == "FINISHED", "a finished run is left as it is"
    assert close_remembered(client, uri) == [], "each record is used once"
    left_over = sorted(p.name for p in (workdir.parent / "state" / "unclosed").iterdir())
    assert len(left_over) == 1 and left_over[0].endswith("-not-this-server.json")


def _project(work: Path, uri: str, experiment: str) -> None:
    torch.manual_seed(0)
    pth = export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28), work / "models" / "student")
    entry = lambda v: {"mnist": {"knn_top1": v}}  # noqa: E731
    (work / "eval.json").write_text(
        json.dumps(
            {
                "student": entry(0.7),
                "teacher": entry(0.71),
                "random_init": entry(0.2),
                "_provenance": {"models": {"student": {"path": str(pth), "sha256": file_sha256(pth)}}},
            }
        )
    )
    params = {
        "tracking": {
            "tracking_uri": uri,
            "system_metrics": False,
            "experiment": experiment,
            "request_retries": 0,
            "request_timeout_s": 3,
            "probe_timeout_s": 2,
        },
        "register": {
            "model_name": experiment,
            "model_path": str(pth.parent),
            "eval_report": str(work / "eval.json"),
            "teacher_path": None,
            "onnx": {"enabled": False},
        },
        "evaluate": {"image_size": 28, "resize_ratio": 1.0},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))


def _running_register(client: mlflow.MlflowClient, experiment: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs(
                [exp.experiment_id], "tags.`dinoflow.stage` = 'register' and attributes.status = 'RUNNING'"
            )
            if runs:
                return runs[0].info.run_id
        time.sleep(0.1)
    raise AssertionError("the register run never appeared")


@pytest.mark.slow
def test_mlflow_killed_mid_register_leaves_no_run_running_forever(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    artifacts = str(tmp_path / "artifacts")
    port = free_port()
    uri, server, _ = spawn_mlflow(tmp_path, store, artifacts, port=port)
    work = tmp_path / "work"
    work.mkdir()
    _project(work, uri, "lost-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["DINOFLOW_STATE_DIR"] = str(tmp_path / "state")
    try:
        reg = subprocess.Popen(
            [str(BIN / "dinoflow"), "register"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        client = mlflow.MlflowClient(uri)
        run_id = _running_register(client, "lost-server", time.monotonic() + 180)
        os.killpg(server.pid, signal.SIGKILL)  # the server dies with the register half done
        server.wait(timeout=30)
        _, err = reg.communicate(timeout=300)
        assert reg.returncode == 1, err.decode()[-3000:]
        assert "lost the MLflow tracking server" in err.decode() or "unreachable" in err.decode(), err.decode()
        assert "Traceback" not in err.decode()

        uri, server, _ = spawn_mlflow(tmp_path, store, artifacts, port=port)  # back, on the same store
        parent_id = client.get_run(run_id).data.tags["mlflow.parentRunId"]
        assert client.get_run(run_id).info.status == "RUNNING", "nothing could end it while the server was down"
        again = subprocess.run(
            [str(BIN / "dinoflow"), "register"], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr[-3000:]
        for rid in (run_id, parent_id):
            run = client.get_run(rid)
            assert run.info.status == "FAILED", (rid, run.info.status)
            assert "lost the server" in run.data.tags[TAG_CLOSED]
            assert run.info.end_time is not None
        assert not list((tmp_path / "state" / "unclosed").iterdir()), "each record used once"
    finally:
        if reg.poll() is None:
            reg.kill()
        stop(server)
