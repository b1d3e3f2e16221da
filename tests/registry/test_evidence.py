"""eval.json as evidence: `register` refuses a report that did not evaluate the file it registers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinoflow.config import load_config
from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.models import build_backbone, export_backbone
from dinoflow.registry import EvaluationMismatch, check_evaluated, read_eval_report, register


def _student(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28), path / "backbone.pth")


def _report(path: Path, evaluated: Path | None) -> Path:
    entry = {"mnist": {"knn_top1": 0.8}}
    rep: dict = {"student": entry, "teacher": entry, "random_init": {"mnist": {"knn_top1": 0.5}}}
    if evaluated is not None:
        rep["_provenance"] = {
            "models": {"student": {"path": str(evaluated), "sha256": file_sha256(evaluated)}},
            "datasets": {"mnist": {"fingerprint": "f" * 64}},
        }
    path.write_text(json.dumps(rep))
    return path


def test_read_eval_report_splits_results_and_provenance(tmp_path):
    s = _student(tmp_path / "s", 0)
    ev = read_eval_report(_report(tmp_path / "eval.json", s))
    assert set(ev.models) == {"student", "teacher", "random_init"}
    assert ev.model_files["student"]["sha256"] == file_sha256(s) and ev.eval_set("mnist") == "f" * 64
    assert ev.eval_set("digits") is None
    with pytest.raises(DinoflowError, match="run `dinoflow evaluate` first"):
        read_eval_report(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DinoflowError, match="not valid JSON"):
        read_eval_report(tmp_path / "bad.json")


def test_check_evaluated_accepts_the_evaluated_file_only(tmp_path):
    evaluated, other = _student(tmp_path / "real", 0), _student(tmp_path / "two_steps", 1)
    ev = read_eval_report(_report(tmp_path / "eval.json", evaluated))
    assert check_evaluated(ev, "student", evaluated) == file_sha256(evaluated)
    with pytest.raises(EvaluationMismatch, match=f"did not evaluate {other}") as e:
        check_evaluated(ev, "student", other)
    assert "rerun `dinoflow evaluate` with evaluate.models.student=" in str(e.value)
    assert isinstance(e.value, DinoflowError)
    with pytest.raises(EvaluationMismatch, match="does not record which file it evaluated as 'student'"):
        check_evaluated(read_eval_report(_report(tmp_path / "old.json", None)), "student", evaluated)


def test_register_refuses_an_eval_json_about_another_file_before_touching_mlflow(tmp_path, monkeypatch):
    """Issue 14.3: a 2-step student must not be registered with the real student's numbers."""
    monkeypatch.chdir(tmp_path)
    real, two_steps = _student(tmp_path / "models" / "real", 0), _student(tmp_path / "models" / "student", 1)
    _report(tmp_path / "eval.json", real)
    cfg = load_config(
        None,
        [
            "register.eval_report=eval.json",
            "register.model_path=models/student",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "register.report=registry.json",
        ],
    )
    assert two_steps.is_file()
    with pytest.raises(EvaluationMismatch, match="eval.json did not evaluate models/student/backbone.pth"):
        register(cfg)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "registry.json").exists()


@pytest.mark.parametrize(
    ("report", "named"),
    [
        ({"student": {"mnist": {"knn_top1": float("nan")}}}, r"student/mnist knn_top1 is nan, not an accuracy"),
        ({"student": {"mnist": {"knn_top1": 0.8, "linear_top1": "high"}}}, r"student/mnist linear_top1 is 'high'"),
        ({"teacher": {"mnist": {"knn_top5": float("inf")}}}, r"teacher/mnist knn_top5 is inf"),
        ({"student": "0.9"}, r"student is str \(0.9\), not a JSON object"),
        ({"student": {"mnist": [0.9]}}, r"student.mnist is list"),
        ({"student": {"mnist": {"knn_top1": 0.8}}, "_provenance": []}, r"_provenance is list"),
        ({"student": {"mnist": {"knn_top1": 0.8}}, "_provenance": {"models": "x"}}, r"_provenance.models is str"),
        (
            {"student": {"mnist": {"knn_top1": 0.8}}, "_provenance": {"datasets": {"mnist": "f" * 64}}},
            r"_provenance.datasets.mnist is str",
        ),
    ],
)
def test_wrong_types_in_eval_json_are_named_errors(tmp_path, report, named):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(report))  # json writes NaN / Infinity, as a hand edit or another tool may
    with pytest.raises(DinoflowError, match=named):
        read_eval_report(path)


def test_register_refuses_a_nan_score_before_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _student(tmp_path / "s", 0)
    rep = json.loads(_report(tmp_path / "eval.json", s).read_text())
    rep["student"]["mnist"]["knn_top1"] = float("nan")
    (tmp_path / "eval.json").write_text(json.dumps(rep))
    uri = f"sqlite:///{tmp_path}/never.db"
    cfg = load_config(
        None,
        [f"tracking.tracking_uri={uri}", f"register.model_path={s}", f"register.eval_report={tmp_path}/eval.json"],
    )
    with pytest.raises(DinoflowError, match="knn_top1 is nan, not an accuracy"):
        register(cfg)
    assert not (tmp_path / "never.db").exists(), "refused before anything reached MLflow"
