"""The candidates `evaluate` compares: trained models and baselines, each turning images into features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinoflow.config import load_config
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.candidates import RANDOM_INIT, RAW_PIXELS, Candidate, baselines, random_init_reference, trained
from dinoflow.evaluation.run import evaluate
from dinoflow.models import build_backbone


def _ev(*extra):
    return load_config("params.yaml", list(extra)).evaluate


def _model():
    torch.manual_seed(0)
    return build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=0.1)


def test_baselines_follow_the_trained_list_and_the_settings(tmp_path):
    teacher = trained("teacher", _model().train(), tmp_path / "t.pth", "a" * 64)
    assert teacher.kind == "trained" and not teacher.backbone.training  # evaluated in eval mode
    assert "vit_pico/7" in teacher.description and str(tmp_path / "t.pth") in teacher.description
    found, notes = baselines(_ev(), [teacher])
    assert [(c.name, c.kind, c.path, c.sha256) for c in found] == [
        (RANDOM_INIT, "baseline", None, None),
        (RAW_PIXELS, "baseline", None, None),
    ]
    assert found[0].backbone.config.arch == "vit_pico" and "architecture of 'teacher'" in found[0].description
    assert found[1].backbone is None and notes == []
    assert [c.name for c in baselines(_ev("evaluate.baselines=[raw_pixels]"), [teacher])[0]] == [RAW_PIXELS]


def test_random_init_is_skipped_with_a_note_when_no_model_is_trained():
    found, notes = baselines(_ev(), [])
    assert [c.name for c in found] == [RAW_PIXELS]
    assert notes == ["random_init baseline skipped: no model to copy the architecture from"]


def test_random_init_reference_defaults_to_the_teacher_then_the_first_model():
    assert random_init_reference(_ev(), ["student", "teacher"]) == "teacher"
    assert random_init_reference(_ev(), ["a", "b"]) == "a"
    assert random_init_reference(_ev("evaluate.baselines=[raw_pixels]"), ["a"]) is None


def test_a_random_init_reference_outside_the_family_fails_before_any_model_loads(tmp_path):
    # `student` names a family, so the settings pass; its members are `student-a`/`student-b`. The files
    # are not checkpoints: loading them would fail with another error, so this one comes first.
    for m in ("a", "b"):
        (tmp_path / "student" / m).mkdir(parents=True)
        (tmp_path / "student" / m / "backbone.pth").write_bytes(b"not a checkpoint")
    cfg = load_config(
        "params.yaml",
        [
            f"evaluate.models={{student: {tmp_path}/student}}",
            "evaluate.random_init_like=student",
            f"evaluate.report_dir={tmp_path}/reports",
            "tracking.enabled=false",
        ],
    )
    with pytest.raises(DinoflowError, match=r"random_init_like='student' is not one of .*'student-a', 'student-b'"):
        evaluate(cfg)
    assert not (tmp_path / "reports").exists()


def test_pixel_and_backbone_candidates_give_features_and_grids_of_their_own_shape():
    ev = _ev("evaluate.image_size=28", "evaluate.progress=false")
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.arange(3)
    pixels, model = Candidate(RAW_PIXELS, "baseline", ""), Candidate("m", "trained", "", _model())
    kw = dict(n_last_blocks=1, device=torch.device("cpu"), desc="t")
    assert pixels.features(images, labels, ev, **kw).cls.shape == (3, 28 * 28)  # grey stays one channel
    assert model.features(images, labels, ev, **kw).cls.shape == (3, model.backbone.embed_dim)
    gk = dict(size=28, patch=7, device=torch.device("cpu"))
    assert pixels.grids(list(images), with_cls=False, **gk).shape == (3, 3 * 7 * 7, 4, 4)
    assert model.grids(list(images), with_cls=True, **gk).shape == (3, 2 * model.backbone.embed_dim, 4, 4)
