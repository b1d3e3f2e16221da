"""The pretraining stage on a small image folder, single process."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dinoflow.errors import DinoflowError
from dinoflow.train.pretrain import pretrain

from .conftest import ckpt_dir


def test_pretrain_runs_exports_and_logs(tiny_cfg, tmp_path):
    cfg = tiny_cfg("pretrain.train.max_steps=4")
    out = pretrain(cfg)
    assert out["status"] == "finished" and out["step"] == 4
    assert math.isfinite(out["final_loss"])
    teacher = tmp_path / "teacher"
    for name in ("backbone.pth", "config.yaml", "heads.pth", "train_config.yaml"):
        assert (teacher / name).exists(), name
    assert out["checkpoint_dir"] == str(ckpt_dir(teacher)) and (ckpt_dir(teacher) / "latest").exists()
    rows = list(csv.DictReader((tmp_path / "pretrain.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for key in ("dino_local", "dino_global", "ibot", "koleo", "lr", "teacher_temp", "momentum"):
        assert math.isfinite(float(rows[-1][key])), key
    sd = torch.load(teacher / "backbone.pth", weights_only=True)
    assert "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd


def test_teacher_moves_by_ema(tiny_cfg, tmp_path):
    from dinoflow.models import load_backbone
    from dinoflow.train.pretrain_objective import PretrainObjective

    cfg = tiny_cfg("pretrain.train.max_steps=2")
    init = PretrainObjective(cfg.pretrain, torch.device("cpu")).teacher.backbone.state_dict()
    pretrain(cfg)
    trained = load_backbone(tmp_path / "teacher" / "backbone.pth").state_dict()
    moved = [k for k in init if not torch.equal(init[k], trained[k])]
    assert moved, "the EMA teacher never changed"


def test_bad_crop_geometry_is_rejected_before_work(tiny_cfg, tmp_path):
    cfg = tiny_cfg("pretrain.crops.local_size=12")
    with pytest.raises(DinoflowError, match="local_size=12 is not a multiple of the patch size 7"):
        pretrain(cfg)
    assert not (tmp_path / "teacher").exists()


def test_missing_data_is_named(tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"pretrain.data={tmp_path / 'nowhere'}")
    with pytest.raises(DinoflowError, match="does not exist"):
        pretrain(cfg)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    from dinoflow.train import pretrain_objective as objectives

    cfg = tiny_cfg("pretrain.train.max_steps=4")
    pretrain(
        cfg.model_copy(
            update={
                "pretrain": cfg.pretrain.model_copy(
                    update={"train": cfg.pretrain.train.model_copy(update={"max_steps": 2})}
                )
            }
        )
    )
    latest = ckpt_dir(tmp_path / "teacher") / "latest"
    ckpt = latest.read_text()
    real = objectives.PretrainObjective.loss

    def poisoned(self, net, v, s):
        loss, m = real(self, net, v, s)
        return loss * float("nan"), m

    monkeypatch.setattr(objectives.PretrainObjective, "loss", poisoned)
    with pytest.raises(DinoflowError, match="loss became nan"):
        pretrain(cfg)
    assert latest.read_text() == ckpt
