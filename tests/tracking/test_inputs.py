"""S3 inputs with tracking on; credentials in a URL are refused before any run starts."""

from __future__ import annotations

import json

import mlflow
import pytest

from dinoflow import tracking
from dinoflow.config import load_config
from dinoflow.errors import ConfigError


@pytest.mark.slow
def test_s3_inputs_are_recorded_without_credentials(workdir, mlflow_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    common = [
        f"tracking.tracking_uri={mlflow_server.uri}",
        "tracking.experiment=s3-inputs",
        "tracking.system_metrics=false",
        "curate.seeds=null",
        "curate.eval_sets=[]",
    ]
    with pytest.raises(ConfigError, match="carries credentials"):
        load_config(None, [*common, "curate.sources=" + json.dumps(["s3://reader:hunter2@pool-bucket/raw/"])])
    cfg = load_config(
        None,
        [
            *common,
            "curate.sources=" + json.dumps(["s3://pool-bucket/raw/", "s3://pool-bucket/more/"]),
            "pretrain.data=s3://pool-bucket/curated/",
        ],
    )
    runs = {}
    for stage in ("curate", "pretrain"):
        with tracking.stage_run(stage, cfg) as run:
            runs[stage] = run.info.run_id
    client = mlflow.MlflowClient(mlflow_server.uri)
    cur, pre = client.get_run(runs["curate"]), client.get_run(runs["pretrain"])
    assert cur.data.tags["dinoflow.input.s3/pool-bucket/raw"] == "s3://pool-bucket/raw/"
    assert cur.data.tags["dinoflow.input.s3/pool-bucket/more"] == "s3://pool-bucket/more/"
    assert pre.data.tags["dinoflow.input.s3/pool-bucket/curated"] == "s3://pool-bucket/curated/"
    sources = [json.loads(i.dataset.source) for i in pre.inputs.dataset_inputs]
    assert any("pool-bucket/curated" in json.dumps(s) for s in sources), sources
    everything = json.dumps([cur.to_dictionary(), pre.to_dictionary()])
    resolved = client.download_artifacts(runs["curate"], "config/resolved.yaml", str(workdir))
    assert "hunter2" not in everything and "hunter2" not in open(resolved).read()
