"""A pipeline run's start closes the MLflow parents that terminated runs left RUNNING (KFP may not
run the exit handler after a terminate), and only those: against a real MLflow server and the
stand-in Kubernetes API (tests/launch/standin_k8s.py: no API server can run here) for the pods."""

from __future__ import annotations

import time

import mlflow
import pytest
import standin_k8s

from dinoflow.config import load_config
from dinoflow.config.pipeline_env import KFP_POD_NAME, KFP_POD_UID
from dinoflow.errors import DinoflowError
from dinoflow.launch.stale_runs import TAG_CLOSE_REASON, TAG_CLOSED_BY, close_stale_pipeline_runs, is_stale
from dinoflow.tracking.parent import TAG_PIPELINE_RUN_ID, TAG_ROLE

HOUR_MS = 3600 * 1000


@pytest.fixture
def k8s():
    cluster, server = standin_k8s.start()
    yield cluster
    server.shutdown()


def _pod(cluster, name: str, run_id: str, phase: str) -> None:
    cluster.pods[name] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team", "labels": {"pipeline/runid": run_id}},
        "spec": {"containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": phase},
    }


def _parent(client, exp: str, run_id: str, start_ms: int) -> str:
    tags = {TAG_ROLE: "pipeline", TAG_PIPELINE_RUN_ID: run_id}
    return client.create_run(exp, start_time=start_ms, tags=tags, run_name=f"pipeline-{run_id}").info.run_id


def test_the_decision():
    assert is_stale(alive=False, last_activity_ms=0, now_ms=HOUR_MS, idle_s=3600)
    assert not is_stale(alive=True, last_activity_ms=0, now_ms=10 * HOUR_MS, idle_s=3600)  # a pod still works
    assert not is_stale(alive=False, last_activity_ms=1, now_ms=HOUR_MS, idle_s=3600)  # e.g. between retries


@pytest.mark.slow
def test_a_start_closes_only_the_dead_runs_parents(mlflow_server, k8s, monkeypatch):
    experiment = f"stale-{time.time_ns()}"
    cfg = load_config(None, [f"tracking.tracking_uri={mlflow_server.uri}", f"tracking.experiment={experiment}"])
    client = mlflow.MlflowClient(mlflow_server.uri)
    exp = client.create_experiment(experiment)
    old = int(time.time() * 1000) - 3 * HOUR_MS
    dead = _parent(client, exp, "run-terminated", old)
    child = client.create_run(exp, start_time=old, tags={"mlflow.parentRunId": dead}).info.run_id
    client.set_terminated(child, "KILLED", end_time=old + 1000)
    working = _parent(client, exp, "run-training", old)  # a days-long step: its pod is Running
    _pod(k8s, "run-training-pretrain", "run-training", "Running")
    _pod(k8s, "run-terminated-curate", "run-terminated", "Failed")  # a dead pod of the dead run
    retrying = _parent(client, exp, "run-between-retries", old)  # no pod now, but logged a minute ago
    client.create_run(exp, tags={"mlflow.parentRunId": retrying})
    mine = _parent(client, exp, "run-now", old)
    by_hand = client.create_run(exp, start_time=old, tags={TAG_ROLE: "pipeline"}).info.run_id  # no pipeline run id

    # without pods to look at, nothing is closed: a run that still works could be ended
    assert close_stale_pipeline_runs(cfg, "run-now", namespace="team", k8s_host=k8s.host) == []  # not in a KFP pod
    monkeypatch.setenv(KFP_POD_NAME, "run-now-close-stale-runs")
    monkeypatch.setenv(KFP_POD_UID, "uid-now")
    assert close_stale_pipeline_runs(cfg, "run-now", namespace="team", k8s_host="http://127.0.0.1:9") == []
    assert client.get_run(dead).info.status == "RUNNING"

    assert close_stale_pipeline_runs(cfg, "run-now", namespace="team", k8s_host=k8s.host) == [dead]
    got = client.get_run(dead)
    assert got.info.status == "KILLED" and got.data.tags[TAG_CLOSED_BY] == "run-now"
    assert "run-terminated" in got.data.tags[TAG_CLOSE_REASON] and "exit handler" in got.data.tags[TAG_CLOSE_REASON]
    for run in (working, retrying, mine, by_hand):
        assert client.get_run(run).info.status == "RUNNING"
    with pytest.raises(DinoflowError, match="DINOFLOW_PIPELINE_RUN_ID"):
        close_stale_pipeline_runs(cfg, None, namespace="team", k8s_host=k8s.host)
