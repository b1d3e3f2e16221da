"""dinoflow.registry: the quality gate, and registration against the real MLflow server."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dinoflow.config import RegisterConfig, load_config
from dinoflow.errors import DinoflowError
from dinoflow.registry import gate_verdict, read_eval_report, register


def report(student: float | None, teacher: float | None, dataset: str = "mnist") -> dict:
    out: dict = {}
    if student is not None:
        out["student"] = {dataset: {"knn_top1": student}, "other": {"knn_top1": 0.1}}
    if teacher is not None:
        out["teacher"] = {dataset: {"knn_top1": teacher}}
    return out


# ---------------------------------------------------------------- the gate


def test_gate_passes_with_its_numbers():
    v = gate_verdict(report(0.93, 0.95), RegisterConfig(min_knn_top1=0.9, min_retention=0.95))
    assert v["passed"] and v["reasons"] == []
    assert v["knn_top1"] == 0.93 and v["teacher_knn_top1"] == 0.95
    assert v["retention"] == pytest.approx(0.93 / 0.95)


@pytest.mark.parametrize(
    ("student", "teacher", "expect"),
    [
        (0.85, 0.86, ["knn_top1 0.8500 < min_knn_top1 0.9000"]),  # absolute threshold only
        (0.91, 0.99, ["retention 0.9192"]),  # retention only
        (0.50, 0.99, ["knn_top1 0.5000", "retention 0.5051"]),  # both
        (0.95, None, ["retention cannot be checked"]),  # no teacher
    ],
)
def test_gate_fails_with_reasons(student, teacher, expect):
    v = gate_verdict(report(student, teacher), RegisterConfig(min_knn_top1=0.9, min_retention=0.95))
    assert not v["passed"]
    assert len(v["reasons"]) == len(expect)
    for reason, text in zip(v["reasons"], expect):
        assert text in reason


def test_gate_at_the_threshold_passes():
    v = gate_verdict(report(0.9, 0.9), RegisterConfig(min_knn_top1=0.9, min_retention=1.0))
    assert v["passed"]


def test_missing_student_score_is_named():
    with pytest.raises(DinoflowError, match=r"no knn_top1 for model 'student' on dataset 'digits'"):
        gate_verdict(report(0.9, 0.9), RegisterConfig(dataset="digits"))


def test_missing_or_bad_report_is_named(tmp_path):
    with pytest.raises(DinoflowError, match="run `dinoflow evaluate` first"):
        read_eval_report(tmp_path / "nope.json")
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    with pytest.raises(DinoflowError, match="not valid JSON"):
        read_eval_report(bad)


# ---------------------------------------------------------------- against the server


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _reference_embeddings(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The backbone's CLS embedding at native size: [0,1], grey → RGB, ImageNet mean/std (no resize)."""
    x = torch.from_numpy(images).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_features((x - mean) / std)["x_norm_clstoken"].numpy()


@pytest.mark.slow
def test_register_gate_moves_champion_only_when_passing(tmp_path, monkeypatch, mlflow_server):
    from dinoflow.models import build_backbone, export_backbone

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    student = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    teacher = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    export_backbone(student, "models/student")
    export_backbone(teacher, "models/teacher")
    name = f"dinoflow-test-{time.time_ns()}"
    overrides = [f"tracking.tracking_uri={mlflow_server.uri}", "tracking.system_metrics=false",
                 "tracking.experiment=registry", f"register.model_name={name}",
                 "evaluate.image_size=28", "evaluate.resize_ratio=1.0"]
    cfg = load_config(None, overrides)
    Path("reports").mkdir()
    Path("reports/eval.json").write_text(json.dumps(report(0.93, 0.95)))

    first = register(cfg)
    assert first["gate"]["passed"] and first["version"] == "1" and first["alias_version"] == "1"
    assert json.loads(Path("reports/registry.json").read_text()) == json.loads(json.dumps(first))

    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    expected = _reference_embeddings(student, images)
    mlflow.set_tracking_uri(mlflow_server.uri)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    got = served.predict(images)
    assert got.shape == (6, student.embed_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served.predict(np.repeat(images[..., None], 3, axis=-1)), expected, rtol=1e-5, atol=1e-5)
    from_bytes = served.predict(pd.DataFrame({"image": [_png(a) for a in images]}))
    np.testing.assert_allclose(from_bytes, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="uint8"):
        served.predict(images.astype(np.float32) / 255)

    client = mlflow.MlflowClient(mlflow_server.uri)
    v1 = client.get_model_version(name, "1")
    assert v1.tags["gate"] == "passed" and float(v1.tags["gate.knn_top1"]) == pytest.approx(0.93)
    run = client.get_run(first["run_id"])
    assert {a.path for a in client.list_artifacts(first["run_id"], "weights/student")} >= {
        "weights/student/backbone.pth", "weights/student/config.yaml"}
    assert run.data.metrics["retention"] == pytest.approx(0.93 / 0.95)
    logged = mlflow.models.get_model_info(first["logged_model_uri"])
    assert list(logged.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, student.embed_dim]

    # a worse student: a new candidate version, tagged failed; champion stays on version 1
    Path("reports/eval.json").write_text(json.dumps(report(0.80, 0.95)))
    second = register(cfg)
    assert not second["gate"]["passed"] and second["version"] == "2" and second["alias_version"] == "1"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["gate"] == "failed" and "min_knn_top1" in v2.tags["gate.reasons"]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
