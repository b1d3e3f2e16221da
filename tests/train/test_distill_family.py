"""Several students from one teacher pass: each trains as it would alone, the teacher runs once a
step, a two-student run resumes exactly, each student is exported to its own folder."""

from __future__ import annotations

import csv

import pytest
import torch
from pydantic import ValidationError

from dinoflow.config import DistillConfig, load_config
from dinoflow.train.distill import distill
from dinoflow.train.distill_family import FamilyObjective
from dinoflow.train.pretrain import pretrain

from .conftest import ckpt_dir, tiny_overrides

A = "{name: a, arch: vit_pico, patch_size: 7, img_size: 28, layerscale_init: 1.0}"
B = "{name: b, arch: vit_pico, patch_size: 14, img_size: 28, layerscale_init: 1.0}"
COMMON = [
    "distill.crops={global_size: 28, local_size: 14, n_local: 2}",
    "distill.optim={base_lr: 0.01, warmup_epochs: 1, freeze_last_layer_epochs: 0}",
    "distill.train={epochs: 2, epoch_length: 3, batch_size_per_rank: 8, checkpoint_every: 3, progress: false}",
]


def _cfg(tmp, data, out, *extra):
    return load_config(
        None,
        tiny_overrides(tmp, data, "pretrain.train.max_steps=2")
        + COMMON
        + [
            f"distill.data={data}",
            f"distill.teacher={tmp / 'teacher'}",
            f"distill.out_dir={tmp / out}",
            f"distill.report_csv={tmp / out}.csv",
            *extra,
        ],
    )


@pytest.fixture
def teacher(tmp_path, image_folder):
    pretrain(_cfg(tmp_path, image_folder, "unused"))
    return tmp_path / "teacher"


def _weights(path):
    return torch.load(path / "backbone.pth", weights_only=True)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode,n_global", [("heads", 2), ("features", 2), ("features", 1)])
def test_a_student_in_a_family_trains_exactly_as_it_would_alone(tmp_path, image_folder, teacher, mode, n_global):
    crops = f"distill.crops.n_global={n_global}"
    solo = _cfg(
        tmp_path, image_folder, "solo", f"distill.mode={mode}", crops, "distill.student=" + A.replace("name: a, ", "")
    )
    distill(solo)
    fam = _cfg(tmp_path, image_folder, "family", f"distill.mode={mode}", crops, f"distill.students=[{A}, {B}]")
    out = distill(fam)
    assert out["status"] == "finished" and out["step"] == 6
    # disjoint parameters, per-student clipping, an element-wise optimiser: the other student changes nothing
    assert _equal(_weights(tmp_path / "solo"), _weights(tmp_path / "family" / "a"))
    b = _weights(tmp_path / "family" / "b")
    assert b["patch_embed.proj.weight"].shape[-1] == 14  # b's own architecture
    rows = list(csv.DictReader((tmp_path / "family.csv").open()))
    assert len(rows) == 6 and {"a.loss", "b.loss"} <= set(rows[0])
    assert not (tmp_path / "family" / "backbone.pth").exists()


def test_the_teacher_runs_once_a_step_for_every_student(tmp_path, image_folder, teacher):
    cfg = _cfg(tmp_path, image_folder, "family", f"distill.students=[{A}, {B}]")
    obj = FamilyObjective(cfg.distill, torch.device("cpu"))
    calls = []
    obj.first.teacher.register_forward_hook(lambda *_: calls.append(1))
    assert all(m.teacher is obj.first.teacher for m in obj.members.values())  # loaded once
    g = torch.randn(2 * 4, 3, 28, 28)
    v = {"global_crops": g, "local_crops": torch.randn(2 * 4, 3, 14, 14)}
    s = {"teacher_temp": 0.05}
    total, metrics = obj.loss(obj.train_module(), v, s)
    assert len(calls) == 1
    assert torch.allclose(total, metrics["a.loss"] + metrics["b.loss"])


def test_two_students_resume_exactly(tmp_path, image_folder, teacher):
    fam = [f"distill.students=[{A}, {B}]"]
    distill(_cfg(tmp_path, image_folder, "straight", *fam))
    distill(_cfg(tmp_path, image_folder, "resumed", *fam, "distill.train.max_steps=3"))
    assert (ckpt_dir(tmp_path / "resumed", "distill") / "latest").read_text().strip() == "step_00000003"
    out = distill(_cfg(tmp_path, image_folder, "resumed", *fam))
    assert out["resumed_from"] == 3
    for name in ("a", "b"):
        assert _equal(_weights(tmp_path / "straight" / name), _weights(tmp_path / "resumed" / name)), name


def test_student_and_students_are_one_or_the_other():
    with pytest.raises(ValidationError, match="not both"):
        DistillConfig(student={"arch": "vit_tiny"}, students=[{"name": "a", "arch": "vit_pico"}])
    with pytest.raises(ValidationError, match="share a name"):
        DistillConfig(students=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValidationError, match="pattern"):
        DistillConfig(students=[{"name": "a.b"}])


def test_one_student_distillation_resumes_exactly(tmp_path, image_folder, teacher):
    """Its mask token never gets a gradient (nothing is masked), so the checkpoint holds no optimiser
    state for it: the resume must load without one and leave it without one."""
    one = ["distill.student=" + A.replace("name: a, ", "")]
    distill(_cfg(tmp_path, image_folder, "straight", *one))
    distill(_cfg(tmp_path, image_folder, "resumed", *one, "distill.train.max_steps=3"))
    assert distill(_cfg(tmp_path, image_folder, "resumed", *one))["resumed_from"] == 3
    assert _equal(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
