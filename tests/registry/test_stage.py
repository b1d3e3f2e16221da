"""The register stage's steps that need no MLflow server: opening the student, its private copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinoflow.config import load_config
from dinoflow.errors import DinoflowError
from dinoflow.models import build_backbone, export_backbone
from dinoflow.registry import register
from dinoflow.registry.stage import _snapshot, open_student


def test_a_missing_student_is_named_before_anything_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["tracking.enabled=false", "register.model_path=models/student"])
    with pytest.raises(DinoflowError) as e:
        register(cfg)
    assert str(e.value) == (
        "student backbone models/student/backbone.pth not found: run `dinoflow distill` first "
        "(or set register.model_path)"
    )
    assert not Path(cfg.register.report).exists()


def test_the_private_copy_holds_the_weights_and_the_configs_beside_them(tmp_path):
    torch.manual_seed(0)
    pth = export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), tmp_path / "s")
    (pth.parent / "train_config.yaml").write_text("data: data/curated\n")
    (pth.parent / "heads.pth").write_bytes(b"not copied")
    staged = _snapshot(open_student(pth), tmp_path / "copy")
    assert staged.path == tmp_path / "copy" / "backbone.pth"
    assert sorted(p.name for p in staged.folder.iterdir()) == ["backbone.pth", "config.yaml", "train_config.yaml"]
    assert staged.path.read_bytes() == pth.read_bytes()
    assert staged.load().embed_dim == staged.load().embed_dim and staged.load() is staged.load()
