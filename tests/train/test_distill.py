"""Distillation through the one loop: heads mode from a pretraining output, head-free mode from
a backbone-only file (other width, patch size and token grid), token resampling, errors."""

from __future__ import annotations

import pytest
import torch

from dinoflow.config import load_config
from dinoflow.errors import DinoflowError
from dinoflow.models import build_backbone, export_backbone, load_backbone
from dinoflow.train.distill import distill
from dinoflow.train.distill_objectives import cosine_distance, resample_tokens
from dinoflow.train.pretrain import pretrain

from .conftest import tiny_overrides

STUDENT = [
    "distill.student={arch: vit_pico, patch_size: 4, img_size: 28, layerscale_init: 1.0}",
    "distill.crops={global_size: 28, local_size: 16, n_local: 2}",
    "distill.optim={base_lr: 0.01, warmup_epochs: 1, freeze_last_layer_epochs: 0}",
    "distill.train={epochs: 2, epoch_length: 3, batch_size_per_rank: 8, checkpoint_every: 3, progress: false}",
]


def _distill_cfg(tmp, data, *extra):
    return load_config(None, tiny_overrides(tmp, data) + STUDENT + [
        f"distill.data={data}", f"distill.out_dir={tmp / 'student'}", f"distill.report_csv={tmp / 'distill.csv'}", *extra])


def test_resample_tokens_keeps_constant_maps_and_changes_grid():
    x = torch.ones(2, 16, 5) * torch.arange(5.0)
    y = resample_tokens(x, (4, 4), (7, 7))
    assert y.shape == (2, 49, 5) and torch.allclose(y, torch.ones(2, 49, 5) * torch.arange(5.0))
    assert resample_tokens(x, (4, 4), (4, 4)) is x


def test_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_distance(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert cosine_distance(a, -a).item() == pytest.approx(2.0)


def test_heads_mode_from_a_pretraining_run(tmp_path, image_folder):
    cfg = _distill_cfg(tmp_path, image_folder, "pretrain.train.max_steps=2")
    pretrain(cfg)
    out = distill(cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher": str(tmp_path / "teacher")})}))
    assert out["status"] == "finished" and out["step"] == 6
    student = load_backbone(tmp_path / "student" / "backbone.pth")
    assert student.embed_dim == 64 and student.patch_size == 4  # the student's own architecture
    assert (tmp_path / "distill.csv").read_text().count("\n") == 7  # header + 6 steps


def test_feature_mode_from_a_backbone_only_file(tmp_path, image_folder):
    torch.manual_seed(0)
    teacher = build_backbone("vit_mini", patch_size=7, img_size=28, layerscale_init=1.0)
    export_backbone(teacher, tmp_path / "hub" / "backbone.pth")
    (tmp_path / "hub" / "config.yaml").unlink()  # backbone-only, like an official hub file
    cfg = _distill_cfg(tmp_path, image_folder, "distill.mode=features", f"distill.teacher={tmp_path / 'hub' / 'backbone.pth'}")
    out = distill(cfg)
    assert out["status"] == "finished"
    import csv

    rows = list(csv.DictReader((tmp_path / "distill.csv").open()))
    assert {"cls", "patch", "local_cls"} <= set(rows[0])
    assert float(rows[-1]["cls"]) < float(rows[0]["cls"])  # the student moves towards the teacher
    assert load_backbone(tmp_path / "student" / "backbone.pth").embed_dim == 64


def test_heads_mode_needs_a_pretraining_output(tmp_path, image_folder):
    cfg = _distill_cfg(tmp_path, image_folder, f"distill.teacher={tmp_path / 'nothing'}")
    with pytest.raises(DinoflowError, match="needs a dinoflow pretraining output"):
        distill(cfg)
