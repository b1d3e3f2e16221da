"""The whole pipeline, tiny, against real services: MLflow server (PostgreSQL backend where it
can start, artifacts in S3 on a moto_server endpoint), every stage function for real.

Checks that every stage logs one run nested under one pipeline run, and that the registered
champion served through `mlflow.pyfunc` returns the student backbone's embeddings (the
L2-normalised CLS token after the evaluation transform).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dinoflow import tracking
from dinoflow.config import load_config
from dinoflow.stages import PIPELINE_ORDER, run_stage

pytestmark = pytest.mark.slow

TINY_PIPELINE = [
    "tracking.system_metrics=false",
    "demo.include_digits=false",
    "demo.n_exact_dups=20",
    "demo.n_near_dups=20",
    "demo.n_junk=12",
    "demo.n_corrupt=6",
    "demo.n_eval=200",
    "demo.n_eval_copies=5",
    "curate.kmeans_levels=[20, 5]",
    "pretrain.model={arch: vit_pico, patch_size: 7, img_size: 28, layerscale_init: 0.1}",
    "pretrain.head={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16}",
    "pretrain.crops={global_size: 28, local_size: 14, n_local: 2}",
    "pretrain.train={epochs: 1, epoch_length: 3, batch_size_per_rank: 16, progress: false}",
    "distill.student={arch: vit_pico, patch_size: 7, img_size: 28}",
    "distill.crops={global_size: 28, local_size: 14, n_local: 2}",
    "distill.train={epochs: 1, epoch_length: 2, batch_size_per_rank: 16, progress: false}",
    "evaluate.max_train=300",
    "evaluate.max_test=100",
    "evaluate.linear_epochs=2",
    "evaluate.linear_lrs=[0.01]",
    "evaluate.ks=[10, 20]",
    "evaluate.logreg_cs=[1.0]",
    "evaluate.n_pca_images=1",
    "evaluate.progress=false",
    "evaluate.linear_n_last_blocks=[1]",
    "evaluate.linear_avgpool=[false]",
    "register.min_teacher_gain=null",
    "register.min_retention=null",
    "register.onnx.enabled=false",
]


def test_tiny_pipeline_tracked_and_registered(tmp_path, monkeypatch, mlflow_server):
    from dinoflow.evaluation.transform import eval_transform
    from dinoflow.models import load_backbone

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = f"dinoflow-e2e-{time.time_ns()}"
    cfg = load_config(
        None,
        TINY_PIPELINE
        + [
            f"tracking.tracking_uri={mlflow_server.uri}",
            f"tracking.experiment=e2e-{time.time_ns()}",
            f"register.model_name={name}",
        ],
    )
    summaries = {}
    with tracking.pipeline_parent_run(cfg) as parent:
        for stage in PIPELINE_ORDER:
            summaries[stage] = run_stage(stage, cfg)

    client = mlflow.MlflowClient(mlflow_server.uri)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["dinoflow.stage"] for r in runs) == sorted(PIPELINE_ORDER)
    assert all(r.info.status == "FINISHED" for r in runs)
    by_stage = {r.data.tags["dinoflow.stage"]: r for r in runs}
    assert "loss" in by_stage["pretrain"].data.metrics and "loss" in by_stage["distill"].data.metrics

    reg = json.loads(Path("reports/registry.json").read_text())
    assert reg["gate"]["passed"] and reg["alias_version"] == reg["version"]
    assert reg["training_run_id"] == by_stage["distill"].info.run_id, "the version's source run trained it"
    eval_report = json.loads(Path("reports/eval.json").read_text())
    assert {"teacher", "student", "random_init", "raw_pixels"} <= set(eval_report)

    student = load_backbone("models/student/backbone.pth").eval()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    x = eval_transform(torch.from_numpy(images), cfg.evaluate.image_size, cfg.evaluate.resize_ratio)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(student.forward_features(x)["x_norm_clstoken"], dim=-1).numpy()
    mlflow.set_tracking_uri(mlflow_server.uri)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    np.testing.assert_allclose(served.predict(images), expected, rtol=1e-5, atol=1e-5)
