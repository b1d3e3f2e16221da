"""A family of students through `evaluate`'s model list and `dinoflow register`: each student is its own
eval.json entry and its own registered model with its own champion (real MLflow server)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import torch

from dinoflow.config import load_config
from dinoflow.digest import file_sha256
from dinoflow.evaluation.run import check_model_files
from dinoflow.models import build_backbone, export_backbone
from dinoflow.registry import register

SET = "c" * 64


def _family(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    out = {}
    for name in ("small", "tiny"):
        export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), root / name)
        out[name] = root / name / "backbone.pth"
    export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), "models/teacher")
    return out


def test_evaluate_lists_each_student_of_a_family(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = _family(Path("models/student"))
    Path("models/student/ckpt").mkdir()  # checkpoints beside them are not students
    cfg = load_config(None, [])
    got = {name: artifact.path for name, artifact in check_model_files(cfg).items()}
    assert got == {
        "teacher": Path("models/teacher/backbone.pth"),
        "student-small": files["small"],
        "student-tiny": files["tiny"],
    }


@pytest.mark.slow
def test_register_makes_each_student_its_own_model_and_champion(tmp_path, monkeypatch, mlflow_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files = _family(Path("models/student"))
    entry = lambda v: {"mnist": {"knn_top1": v, "linear_top1": v, "logreg_top1": v}}  # noqa: E731
    report = {
        "student-small": entry(0.78),
        "student-tiny": entry(0.70),
        "teacher": entry(0.80),
        "random_init": entry(0.5),
        "_provenance": {
            "models": {f"student-{n}": {"path": str(p), "sha256": file_sha256(p)} for n, p in files.items()},
            "datasets": {"mnist": {"fingerprint": SET, "n_train": 10, "n_test": 5, "n_classes": 2}},
        },
    }
    Path("reports").mkdir()
    Path("reports/eval.json").write_text(json.dumps(report))
    name = f"family-{time.time_ns()}"
    cfg = load_config(
        None,
        [
            f"tracking.tracking_uri={mlflow_server.uri}",
            "tracking.system_metrics=false",
            f"tracking.experiment=family-{time.time_ns()}",
            f"register.model_name={name}",
            "register.min_retention=0.9",
            "evaluate.image_size=28",
            "evaluate.resize_ratio=1.0",
            "register.onnx.enabled=false",
        ],
    )
    out = register(cfg)
    assert set(out["students"]) == {"small", "tiny"}
    small, tiny = out["students"]["small"], out["students"]["tiny"]
    assert small["took_alias"] and small["champion_uri"] == f"models:/{name}-small@champion"
    assert not tiny["took_alias"] and any("retention 0.8750" in r for r in tiny["gate"]["reasons"])
    assert json.loads(Path("reports/registry.json").read_text())["students"]["small"]["version"] == "1"
    assert json.loads(Path("reports/registry-tiny.json").read_text())["model_sha256"] == file_sha256(files["tiny"])
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert client.get_model_version_by_alias(f"{name}-small", "champion").version == "1"
    assert client.get_model_version(f"{name}-tiny", "1").tags["gate"] == "failed"
