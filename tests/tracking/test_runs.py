"""dinoflow.tracking.runs: stage runs, nesting, tags, inputs, no-op modes and named failures.

Fast tests use a SQLite store in a temp dir; `slow` ones use the real MLflow server
(PostgreSQL + S3 on moto) from tests/services.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from services import free_port, start_moto, stop

from dinoflow import tracking
from dinoflow.config import load_config, pipeline_env
from dinoflow.config.stages import section_params
from dinoflow.errors import DinoflowError
from dinoflow.tracking.parent import TAG_PIPELINE_RUN_ID


def make_cfg(uri: str | None = None, *extra: str):
    overrides = ["tracking.system_metrics=false", "pretrain.data=data/curated", *extra]
    if uri:
        overrides.append(f"tracking.tracking_uri={uri}")
    return load_config(None, overrides)


def make_curated(root: Path) -> Path:
    d = root / "data" / "curated"
    (d / "sub").mkdir(parents=True)
    (d / "shard-000000.tar").write_bytes(b"not really a tar" * 10)
    (d / "sub" / "manifest.json").write_text('{"kept": 3}')
    return d


# ---------------------------------------------------------------- pure helpers


def test_flatten_drops_secrets_and_redacts_urls():
    flat = tracking.flatten(
        {
            "optim": {"base_lr": 0.004, "betas": [0.9, 0.999]},
            "s3": {"aws_secret_access_key": "hunter2", "api_key": "k", "endpoint": "http://user:pw@host:9000/b"},
            "db_password": "pw",
        }
    )
    assert flat["optim.base_lr"] == 0.004
    assert flat["optim.betas"] == "[0.9, 0.999]"
    assert flat["s3.endpoint"] == "http://***@host:9000/b"
    assert not any("secret" in k or "api_key" in k or "password" in k for k in flat)
    assert "hunter2" not in json.dumps(flat) and "pw@" not in json.dumps(flat)


def test_section_params_cover_the_stage_section():
    cfg = make_cfg()
    params = section_params("pretrain", cfg)
    assert params["model.arch"] == cfg.pretrain.model.arch
    assert params["optim.base_lr"] == cfg.pretrain.optim.base_lr
    assert params["seed"] == cfg.seed
    assert section_params("demo-data", cfg)["out_dir"] == cfg.demo.out_dir


def test_tracking_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(make_cfg()) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking.tracking_uri(make_cfg()) == "http://example:5000"
    assert tracking.tracking_uri(make_cfg("sqlite:///x.db")) == "sqlite:///x.db"


# ---------------------------------------------------------------- no-op modes


def test_noop_off_rank_zero(workdir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run("pretrain", make_cfg(f"sqlite:///{workdir}/m.db")) as run:
        assert run is None
        tracking.log_metrics({"loss": 1.0}, step=1)
        tracking.log_params({"a": 1})
        tracking.log_artifact("does-not-matter-when-off.txt")
    assert not (workdir / "m.db").exists() and list(workdir.iterdir()) == []


def test_noop_when_disabled(workdir):
    cfg = make_cfg(f"sqlite:///{workdir}/m.db", "tracking.enabled=false")
    with tracking.stage_run("pretrain", cfg) as run:
        assert run is None
    with tracking.pipeline_parent_run(cfg) as parent:
        assert parent is None
    assert not (workdir / "m.db").exists()


def test_unreachable_server_fails_before_the_stage_works(workdir):
    port = free_port()  # nothing listens there
    cfg = make_cfg(f"http://127.0.0.1:{port}", "tracking.probe_timeout_s=2")
    worked = []
    t0 = time.monotonic()
    with pytest.raises(DinoflowError, match=rf"tracking server http://127.0.0.1:{port} is unreachable"):
        with tracking.stage_run("pretrain", cfg):
            worked.append(True)
    assert not worked
    assert time.monotonic() - t0 < 10, "the probe must not wait for MLflow's retry loop"


# ---------------------------------------------------------------- a local store


@pytest.mark.slow  # a fresh SQLite store runs MLflow's migrations (seconds)
def test_stage_runs_nest_under_one_pipeline_run_via_state_file(workdir):
    """dvc repro-style: separate stage calls, no driver; later stages join the recorded parent."""
    make_curated(workdir)
    uri = f"sqlite:///{workdir}/m.db"
    cfg = make_cfg(uri)
    run_ids = {}
    for stage in ("pretrain", "distill"):
        with tracking.stage_run(stage, cfg) as run:
            assert run is not None
            for step in range(3):
                tracking.log_metrics({"loss": 2.0 - step}, step=step)
            report = workdir / "reports" / f"{stage}.csv"
            report.parent.mkdir(exist_ok=True)
            report.write_text("step,loss\n0,2.0\n")
            tracking.log_artifact(report, "reports")
            run_ids[stage] = run.info.run_id
    client = mlflow.MlflowClient(uri)
    pre, dis = (client.get_run(run_ids[s]) for s in ("pretrain", "distill"))
    parent = pre.data.tags["mlflow.parentRunId"]
    assert dis.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).data.tags["dinoflow.role"] == "pipeline"
    assert pre.info.status == "FINISHED" and pre.data.tags["dinoflow.stage"] == "pretrain"
    assert pre.data.params["model.arch"] == cfg.pretrain.model.arch
    history = client.get_metric_history(run_ids["pretrain"], "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0), (2, 0.0)]
    arts = {a.path for a in client.list_artifacts(run_ids["pretrain"], "reports")}
    assert arts == {"reports/pretrain.csv"}
    resolved = client.download_artifacts(run_ids["pretrain"], "config/resolved.yaml", str(workdir))
    assert load_config(resolved).pretrain == cfg.pretrain

    # the DVC hash of the input data, and a dataset reference (not a copy)
    md5 = pre.data.tags["dvc.md5.data/curated"]
    assert md5.endswith(".dir") and md5 == tracking.dvc_md5("data/curated")
    inputs = pre.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == md5[:32]
    assert json.loads(inputs[0].dataset.source)["uri"].endswith("data/curated")
    assert not [a for a in client.list_artifacts(run_ids["pretrain"]) if "shard" in a.path]

    # rerunning an earlier stage starts a new pipeline run
    with tracking.stage_run("pretrain", cfg) as again:
        pass
    assert client.get_run(again.info.run_id).data.tags["mlflow.parentRunId"] != parent


@pytest.mark.slow
def test_failed_stage_marks_its_run_failed(workdir):
    uri = f"sqlite:///{workdir}/m.db"
    with pytest.raises(ValueError, match="boom"):
        with tracking.stage_run("curate", make_cfg(uri)) as run:
            raise ValueError("boom")
    assert mlflow.MlflowClient(uri).get_run(run.info.run_id).info.status == "FAILED"


def test_dvc_md5_changes_with_content(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("a")
    first = tracking.dvc_md5(d)
    (d / "a.txt").write_text("b")
    assert tracking.dvc_md5(d) != first
    assert tracking.dvc_md5(tmp_path / "missing") is None


# ---------------------------------------------------------------- the real server


def _git_repo(path: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    (path / "README").write_text("x")
    for cmd in (["git", "init", "-q"], ["git", "add", "README"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, check=True, env=env, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_pipeline_on_server_nests_in_and_out_of_process(workdir, mlflow_server, monkeypatch):
    """A driver's parent run; one stage in-process, one in a child process (like dvc repro / torchrun)."""
    commit = _git_repo(workdir)
    make_curated(workdir)
    monkeypatch.setenv(pipeline_env.PIPELINE_RUN_ID, "kfp-run-42")
    mlflow.set_system_metrics_sampling_interval(0.5)
    mlflow.set_system_metrics_samples_before_logging(1)
    cfg = make_cfg(mlflow_server.uri, "tracking.system_metrics=true", "tracking.experiment=nesting")
    try:
        with tracking.pipeline_parent_run(cfg) as parent:
            with tracking.stage_run("pretrain", cfg) as run:
                tracking.log_metrics({"loss": 1.5}, step=0)
                time.sleep(2.0)  # let the system-metrics sampler report once
            child = textwrap.dedent(f"""
                from dinoflow import tracking
                from dinoflow.config import load_config
                cfg = load_config(None, ["tracking.tracking_uri={mlflow_server.uri}", "tracking.experiment=nesting",
                                         "tracking.system_metrics=false"])
                with tracking.stage_run("distill", cfg) as run:
                    tracking.log_metrics({{"loss": 0.5}}, step=0)
                    print("RUN_ID=" + run.info.run_id)
            """)
            out = subprocess.run(
                [sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=workdir
            )
            assert out.returncode == 0, out.stderr[-2000:]
            child_id = [ln for ln in out.stdout.splitlines() if ln.startswith("RUN_ID=")][0][7:]
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
        mlflow.set_system_metrics_samples_before_logging(None)
    client = mlflow.MlflowClient(mlflow_server.uri)
    pre, dis = client.get_run(run.info.run_id), client.get_run(child_id)
    for r in (pre, dis):
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["mlflow.source.git.commit"] == commit
        assert r.data.tags[TAG_PIPELINE_RUN_ID] == "kfp-run-42"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert any(k.startswith("system/cpu_utilization") for k in pre.data.metrics), sorted(pre.data.metrics)
    # artifacts went through the server into S3 (the client holds no S3 credentials)
    # (the bucket is shared by the session's tests: page through every key, not the first 1000)
    pages = (
        mlflow_server.s3.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=mlflow_server.s3.bucket, Prefix="mlartifacts/")
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/config/resolved.yaml") for k in keys)


@pytest.mark.slow
def test_kubeflow_run_id_keys_the_parent_across_processes(workdir, mlflow_server, monkeypatch):
    """Kubeflow pods share only the server: stages with the same KFP run id find one parent."""
    monkeypatch.setenv(pipeline_env.PIPELINE_RUN_ID, f"kfp-{time.time_ns()}")
    cfg = make_cfg(mlflow_server.uri, "tracking.experiment=kfp")
    with tracking.stage_run("curate", cfg) as a:
        pass
    with tracking.stage_run("pretrain", cfg) as b:
        pass
    client = mlflow.MlflowClient(mlflow_server.uri)
    pa = client.get_run(a.info.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(b.info.run_id).data.tags["mlflow.parentRunId"] == pa
    assert client.get_run(pa).data.tags[TAG_PIPELINE_RUN_ID] == os.environ[pipeline_env.PIPELINE_RUN_ID]
    assert list(workdir.iterdir()) == [], "a stage writes nothing into its working directory"


@pytest.mark.slow
def test_bad_s3_credentials_are_named(workdir, tmp_path_factory, monkeypatch):
    """Client-side S3 artifacts against an endpoint that checks credentials: a clear error, before the work."""
    s3 = start_moto(tmp_path_factory.mktemp("moto-auth"), bucket=None, require_auth=True)
    try:
        uri = f"sqlite:///{workdir}/m.db"
        client = mlflow.MlflowClient(uri)
        client.create_experiment("s3exp", artifact_location="s3://dinoflow/artifacts")
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        worked = []
        with pytest.raises(DinoflowError, match="rejected the credentials") as err:
            with tracking.stage_run("curate", make_cfg(uri, "tracking.experiment=s3exp")):
                worked.append(True)
        assert not worked
        assert "AWS_ACCESS_KEY_ID" in str(err.value) and "wrong" not in str(err.value).replace("AKIAWRONG", "")
    finally:
        stop(s3.proc)
