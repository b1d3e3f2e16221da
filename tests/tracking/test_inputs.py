"""S3 inputs with tracking on, and no credential in any URI reaches MLflow."""

from __future__ import annotations

import json

import mlflow
import pytest

from dinoflow import tracking
from dinoflow.config import load_config


@pytest.mark.slow
def test_s3_inputs_are_recorded_without_credentials(workdir, mlflow_server):
    secret_uri = "s3://reader:hunter2@pool-bucket/raw/"
    cfg = load_config(None, [
        f"tracking.tracking_uri={mlflow_server.uri}", "tracking.experiment=s3-inputs", "tracking.system_metrics=false",
        "curate.sources=" + json.dumps(["s3://pool-bucket/raw/", secret_uri]), "curate.seeds=null", "curate.eval_sets=[]",
        "pretrain.data=s3://pool-bucket/curated/",
    ])
    runs = {}
    for stage in ("curate", "pretrain"):
        with tracking.stage_run(stage, cfg) as run:
            runs[stage] = run.info.run_id
    client = mlflow.MlflowClient(mlflow_server.uri)
    cur, pre = client.get_run(runs["curate"]), client.get_run(runs["pretrain"])
    assert cur.data.tags["dinoflow.input.s3/pool-bucket/raw"] in ("s3://pool-bucket/raw/", "s3://***@pool-bucket/raw/")
    assert pre.data.tags["dinoflow.input.s3/pool-bucket/curated"] == "s3://pool-bucket/curated/"
    sources = [json.loads(i.dataset.source) for i in pre.inputs.dataset_inputs]
    assert any("pool-bucket/curated" in json.dumps(s) for s in sources), sources
    everything = json.dumps([cur.to_dictionary(), pre.to_dictionary()])
    resolved = client.download_artifacts(runs["curate"], "config/resolved.yaml", str(workdir))
    assert "hunter2" not in everything and "hunter2" not in open(resolved).read()
