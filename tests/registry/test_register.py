"""`dinoflow register` against the real MLflow server (PostgreSQL or SQLite backend, artifacts in S3 on moto):
every candidate registered, the alias moved by the gate only, MLflow 3 model-centric records, the model itself."""

from __future__ import annotations

import base64
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

from dinoflow import tracking
from dinoflow.config import load_config
from dinoflow.config.pipeline_env import PIPELINE_RUN_ID
from dinoflow.digest import file_sha256
from dinoflow.models import build_backbone, export_backbone
from dinoflow.registry import register

pytestmark = pytest.mark.slow
SET_A, SET_B = "a" * 64, "b" * 64


def write_eval(student_file: Path, student: float, teacher: float = 0.80, eval_set: str = SET_A) -> None:
    entry = lambda v: {"mnist": {"knn_top1": v, "linear_top1": v - 0.01, "logreg_top1": v - 0.02}}  # noqa: E731
    rep = {
        "student": entry(student),
        "teacher": entry(teacher),
        "random_init": entry(0.5),
        "raw_pixels": entry(0.9),
        "_dense": {"student": {"mosaics": {"task": "segmentation", "miou": 0.41, "pixel_acc": 0.9, "lr": 0.01}}},
        "_provenance": {
            "models": {"student": {"path": str(student_file), "sha256": file_sha256(student_file)}},
            "datasets": {"mnist": {"fingerprint": eval_set, "n_train": 10, "n_test": 5, "n_classes": 2}},
        },
    }
    Path("reports").mkdir(exist_ok=True)
    Path("reports/eval.json").write_text(json.dumps(rep))


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def reference(model: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised CLS and mean patch token at native size: [0,1], grey → RGB, ImageNet mean/std (no resize)."""
    x = torch.from_numpy(images).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.forward_features((x - mean) / std)
    cls = torch.nn.functional.normalize(out["x_norm_clstoken"], dim=-1)
    patch = torch.nn.functional.normalize(out["x_norm_patchtokens"].mean(1), dim=-1)
    return cls.numpy(), patch.numpy()


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DINOFLOW_GIT_COMMIT", "0123abc")
    torch.manual_seed(0)
    student = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    export_backbone(student, "models/student")
    export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), "models/teacher")
    name = f"dinoflow-test-{time.time_ns()}"
    overrides = [
        f"tracking.tracking_uri={mlflow_server.uri}",
        "tracking.system_metrics=false",
        f"tracking.experiment=registry-{time.time_ns()}",
        f"register.model_name={name}",
        "evaluate.image_size=28",
        "evaluate.resize_ratio=1.0",
    ]
    return student, name, overrides


def test_register_champion_challenge_and_model_centric_records(project, mlflow_server, monkeypatch):
    student, name, overrides = project
    cfg = load_config(None, overrides)
    pth = Path("models/student/backbone.pth")
    write_eval(pth, 0.78)
    monkeypatch.setenv(PIPELINE_RUN_ID, "kfp-run-7")  # an active parent run wins; the id is still recorded
    with tracking.pipeline_parent_run(cfg) as parent:
        with tracking.stage_run("distill", cfg) as distill_run:  # the run that "trained" models/student
            pass
        first = register(cfg)
    assert first["gate"]["passed"] and first["took_alias"] and first["version"] == "1" and first["alias_version"] == "1"
    assert first["champion_uri"] == f"models:/{name}@champion"
    assert first["training_run_id"] == distill_run.info.run_id
    assert json.loads(Path("reports/registry.json").read_text()) == json.loads(json.dumps(first))

    client = mlflow.MlflowClient(mlflow_server.uri)
    v1 = client.get_model_version(name, "1")
    # the version's source is the LoggedModel, whose source run is the run that trained it
    assert v1.source == f"models:/{first['model_id']}" and v1.run_id == distill_run.info.run_id
    logged = client.get_logged_model(first["model_id"])
    assert logged.source_run_id == distill_run.info.run_id
    assert first["model_id"] in [o.model_id for o in client.get_run(distill_run.info.run_id).outputs.model_outputs]
    linked = {m.key: m for m in logged.metrics}
    assert linked["mnist.knn_top1"].value == pytest.approx(0.78)
    assert linked["mnist.knn_top1"].dataset_name == "mnist" and linked["mnist.knn_top1"].dataset_digest == SET_A[:32]
    tags = v1.tags
    assert tags["gate"] == "passed" and tags["gate.eval_set"] == SET_A and tags["gate.champion_version"] == "none"
    assert float(tags["gate.knn_top1"]) == pytest.approx(0.78) and float(tags["gate.teacher_gain"]) == pytest.approx(
        0.3
    )
    assert (
        tags["dinoflow.model.sha256"] == file_sha256(pth)
        and tags["dinoflow.training_run_id"] == distill_run.info.run_id
    )
    assert tags["dinoflow.git.commit"] == "0123abc" and tags["dinoflow.pipeline_run_id"] == "kfp-run-7"
    assert tags["dinoflow.parent_run_id"] == parent.info.run_id
    card = v1.description
    assert (
        "## Frozen-feature evaluation" in card and "| raw_pixels | 90.0 |" in card and distill_run.info.run_id in card
    )
    assert "passed — took the alias" in card
    assert tags["dense.mosaics.miou"] == "0.410000" and "| student | 41.0 |" in card  # dense numbers shown

    # the model: requirements from the public index, a serving example, ONNX beside it
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", tracking_uri=mlflow_server.uri))
    reqs = (local / "requirements.txt").read_text().split()
    assert not [r for r in reqs if "+" in r], reqs
    assert {r.split("==")[0] for r in reqs} >= {"mlflow", "torch", "numpy", "pillow", "pyyaml", "pydantic", "pandas"}
    example = json.loads((local / "serving_input_example.json").read_text())
    assert len(example["inputs"]) == 2 and base64.b64decode(example["inputs"][0]).startswith(b"\x89PNG")
    onnx_info = json.loads((local / "artifacts" / "onnx" / "onnx.json").read_text())
    assert (local / "artifacts" / "onnx" / "model.onnx").stat().st_size > 0
    assert onnx_info["parity_max_abs_error"] <= 1e-4 and onnx_info["input_shape"] == ["batch", 3, 28, 28]

    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    cls, patch = reference(student, images)
    mlflow.set_tracking_uri(mlflow_server.uri)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    got = served.predict(images)
    assert got.shape == (6, student.embed_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, cls, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served.predict(np.repeat(images[..., None], 3, axis=-1)), cls, atol=1e-5)
    pngs = [_png(a) for a in images]
    np.testing.assert_allclose(served.predict(pd.DataFrame({"image": pngs})), cls, atol=1e-5)
    b64 = np.array([base64.b64encode(p).decode() for p in pngs], dtype=object)
    both = served.predict(b64, params={"pooled_patch_tokens": True})
    np.testing.assert_allclose(both["embedding"], cls, atol=1e-5)
    np.testing.assert_allclose(both["pooled_patch_tokens"], patch, atol=1e-5)
    with pytest.raises(Exception, match="uint8"):
        served.predict(images.astype(np.float32) / 255)
    with pytest.raises(Exception, match="cannot decode an input image"):
        served.predict(np.array([b"not an image"], dtype=object))

    # a worse candidate: registered as version 2 with its verdict; the champion stays on version 1
    quick = load_config(None, overrides + ["register.onnx.enabled=false"])
    write_eval(pth, 0.70, teacher=0.72)
    monkeypatch.delenv(PIPELINE_RUN_ID)  # now a new pipeline run, without a distill run
    second = register(quick)
    assert not second["gate"]["passed"] and second["version"] == "2" and second["alias_version"] == "1"
    assert second["gate"]["floors_passed"], "it passes the floors: only the champion stops it"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["gate"] == "failed" and v2.tags["gate.champion_version"] == "1"
    assert "champion version 1's 0.7800" in v2.tags["gate.reasons"] and "not passed" in v2.description
    # registered again outside the pipeline run: the training run is found through version 1 (same file)
    assert second["training_run_id"] == distill_run.info.run_id and "version 1" in second["training_run_found"]

    # better numbers but on another evaluation set: not comparable, the alias stays
    write_eval(pth, 0.95, teacher=0.96, eval_set=SET_B)
    third = register(quick)
    assert not third["gate"]["passed"] and third["alias_version"] == "1"
    assert "another evaluation set" in third["gate"]["reasons"][0]
    assert client.get_model_version_by_alias(name, "champion").version == "1"


def test_a_student_replaced_while_register_runs_is_not_logged_under_the_old_hash(project, mlflow_server, monkeypatch):
    """The file is swapped after register hashed it (at its first model load): the version holds the bytes
    that were hashed and evaluated, whatever lies on disk later."""
    import dinoflow.models.artifact

    _, name, overrides = project
    pth = Path("models/student/backbone.pth")
    write_eval(pth, 0.78)
    evaluated = file_sha256(pth)
    torch.manual_seed(99)
    other = export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), "other")
    real_load = dinoflow.models.artifact.load_backbone
    swapped = []

    def swap_then_load(path, **kw):
        if not swapped:  # the first load comes after the hash: replace the student under register's feet
            swapped.append(pth.read_bytes())
            pth.write_bytes(other.read_bytes())
        return real_load(path, **kw)

    monkeypatch.setattr(dinoflow.models.artifact, "load_backbone", swap_then_load)
    result = register(load_config(None, overrides + ["register.onnx.enabled=false", "register.teacher_path=null"]))
    assert swapped and file_sha256(pth) != evaluated, "the swap happened"
    assert result["model_sha256"] == evaluated
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert client.get_model_version(name, result["version"]).tags["dinoflow.model.sha256"] == evaluated
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}/{result['version']}", tracking_uri=mlflow_server.uri)
    )
    assert file_sha256(local / "artifacts" / "backbone" / "backbone.pth") == evaluated, "logged what was hashed"


def test_a_champion_holding_the_alias_with_a_nan_score_keeps_it(project, mlflow_server):
    """A version whose recorded score is NaN (an older dinoflow, a hand edit) holds the alias: no candidate
    may take it by comparison, since every comparison with NaN is false."""
    _, name, overrides = project
    cfg = load_config(None, overrides + ["register.onnx.enabled=false", "register.teacher_path=null"])
    pth = Path("models/student/backbone.pth")
    write_eval(pth, 0.60, teacher=0.61)
    assert register(cfg)["took_alias"]
    client = mlflow.MlflowClient(mlflow_server.uri)
    client.set_model_version_tag(name, "1", "gate.knn_top1", "nan")
    write_eval(pth, 0.95, teacher=0.96)
    second = register(cfg)
    assert not second["took_alias"] and second["alias_version"] == "1"
    assert "not a finite number" in second["gate"]["reasons"][0]
    assert client.get_model_version(name, "2").tags["gate"] == "failed"


def test_register_loads_the_student_once_and_computes_its_preprocessing_once(project, mlflow_server, monkeypatch):
    """The ONNX export, the logged model and the model card share one load of register's copy of the
    student; the pre-processing settings are computed once for the ONNX export and both logged models."""
    import dinoflow.embedding.mlflow_model
    import dinoflow.models.artifact

    _, name, overrides = project
    write_eval(Path("models/student/backbone.pth"), 0.78)
    loads, preps = [], []
    real_load, real_prep = dinoflow.models.artifact.load_backbone, dinoflow.embedding.mlflow_model.preprocess_settings

    def counted_load(path, **kw):
        loads.append(Path(path))
        return real_load(path, **kw)

    def counted_prep(cfg):
        preps.append(cfg)
        return real_prep(cfg)

    monkeypatch.setattr(dinoflow.models.artifact, "load_backbone", counted_load)
    monkeypatch.setattr(dinoflow.embedding.mlflow_model, "preprocess_settings", counted_prep)
    result = register(load_config(None, overrides))  # ONNX on and the teacher logged: every user of the backbone
    assert result["registered"] and result["onnx"] and result["teacher_model_uri"], result
    # MLflow loads each logged model back to check its input example: those loads read the logged copy
    # (`<model>/artifacts/backbone/`), not register's files
    mine = [p for p in loads if p.parts[-3:-1] != ("artifacts", "backbone")]
    assert len(loads) - len(mine) == 2, loads
    assert sorted(p.parent.name for p in mine) == ["student", "teacher"], f"one load per backbone: {mine}"
    student_load = next(p for p in mine if p.parent.name == "student")
    assert student_load != Path("models/student/backbone.pth").resolve(), "the student is read from register's copy"
    assert len(preps) == 1
