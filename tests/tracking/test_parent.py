"""One parent run per pipeline run: found by the pipeline run id across pods (also when pods start
together), or through a state file outside the working directory when stages run by hand."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import mlflow
import pytest

from dinoflow import tracking
from dinoflow.config import load_config, pipeline_env
from dinoflow.tracking.parent import TAG_PIPELINE_RUN_ID, TAG_ROLE


def _cfg(uri: str, experiment: str):
    return load_config(
        None,
        [
            f"tracking.tracking_uri={uri}",
            f"tracking.experiment={experiment}",
            "tracking.system_metrics=false",
            "tracking.hash_inputs=false",
        ],
    )


@pytest.mark.slow
def test_pods_starting_together_share_one_parent(workdir, mlflow_server):
    """Four processes (a fan-out's steps) open stage runs of one pipeline run at the same moment."""
    run_id = f"fanout-{time.time_ns()}"
    child = textwrap.dedent(f"""
        import time
        from dinoflow import tracking
        from dinoflow.config import load_config
        cfg = load_config(None, ["tracking.tracking_uri={mlflow_server.uri}", "tracking.experiment=fanout",
                                 "tracking.system_metrics=false", "tracking.hash_inputs=false"])
        time.sleep(max(0.0, {time.time() + 8.0} - time.time()))  # start together
        with tracking.stage_run("curate", cfg) as run:
            print("RUN_ID=" + run.info.run_id)
    """)
    env = {**__import__("os").environ, pipeline_env.PIPELINE_RUN_ID: run_id}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=workdir,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    client = mlflow.MlflowClient(mlflow_server.uri)
    stage_runs = [client.get_run(next(ln[7:] for ln in o[0].splitlines() if ln.startswith("RUN_ID="))) for o in outs]
    parents = {r.data.tags["mlflow.parentRunId"] for r in stage_runs}
    assert len(parents) == 1, parents
    exp = client.get_experiment_by_name("fanout").experiment_id
    alive = client.search_runs(
        [exp], filter_string=f"tags.`{TAG_PIPELINE_RUN_ID}` = '{run_id}' and tags.`{TAG_ROLE}` = 'pipeline'"
    )
    assert [r.info.run_id for r in alive] == list(parents), "the losing creators deleted their parent runs"


@pytest.mark.slow
def test_by_hand_stages_group_through_a_state_file_outside_the_cwd(workdir, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = _cfg(uri, "byhand")
    workdir.chmod(0o555)  # a read-only working directory (root ignores the mode; the assertion below does not)
    try:
        with tracking.stage_run("pretrain", cfg) as a:
            pass
        with tracking.stage_run("distill", cfg) as b:
            pass
    finally:
        workdir.chmod(0o755)
    client = mlflow.MlflowClient(uri)
    pa, pb = (client.get_run(r.info.run_id).data.tags["mlflow.parentRunId"] for r in (a, b))
    assert pa == pb and client.get_run(pa).data.tags[TAG_ROLE] == "pipeline"
    assert list(workdir.iterdir()) == []
    assert list((tmp_path / "state").glob("pipeline-*.json")), "the state lives in DINOFLOW_STATE_DIR"


@pytest.mark.slow
def test_exit_handler_finishes_the_kubeflow_parent(workdir, mlflow_server, monkeypatch):
    monkeypatch.setenv(pipeline_env.PIPELINE_RUN_ID, f"kfp-{time.time_ns()}")
    monkeypatch.setenv(pipeline_env.PIPELINE_RUN_NAME, "nightly-42")
    cfg = _cfg(mlflow_server.uri, "exit-handler")
    with tracking.stage_run("curate", cfg) as run:
        pass
    client = mlflow.MlflowClient(mlflow_server.uri)
    parent = client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "RUNNING"
    assert tracking.finish_pipeline_run(cfg, "FAILED") == parent
    got = client.get_run(parent)
    assert got.info.status == "FAILED" and got.info.run_name == "nightly-42"
