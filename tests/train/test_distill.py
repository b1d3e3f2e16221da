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
    return load_config(
        None,
        tiny_overrides(tmp, data)
        + STUDENT
        + [
            f"distill.data={data}",
            f"distill.out_dir={tmp / 'student'}",
            f"distill.report_csv={tmp / 'distill.csv'}",
            *extra,
        ],
    )


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
    out = distill(
        cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher": str(tmp_path / "teacher")})})
    )
    assert out["status"] == "finished" and out["step"] == 6
    student = load_backbone(tmp_path / "student" / "backbone.pth")
    assert student.embed_dim == 64 and student.patch_size == 4  # the student's own architecture
    assert (tmp_path / "distill.csv").read_text().count("\n") == 7  # header + 6 steps


def test_feature_mode_from_a_backbone_only_file(tmp_path, image_folder):
    torch.manual_seed(0)
    teacher = build_backbone("vit_mini", patch_size=7, img_size=28, layerscale_init=1.0)
    export_backbone(teacher, tmp_path / "hub" / "backbone.pth")
    (tmp_path / "hub" / "config.yaml").unlink()  # backbone-only, like an official hub file
    cfg = _distill_cfg(
        tmp_path, image_folder, "distill.mode=features", f"distill.teacher={tmp_path / 'hub' / 'backbone.pth'}"
    )
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


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "softmax"])
def test_heads_mode_ibot_on_every_patch_never_holds_all_patch_logits(tmp_path, image_folder, centering):
    """Regression: heads mode sent all 2B·N patch tokens through the K-wide heads at once (out of
    memory at ViT-L). The loss now goes through the heads' factors chunk by chunk, with the same
    value as the materialised computation, and keeps nothing [2B·N, K] for the backward."""
    from dinoflow.config import dump_config
    from dinoflow.train.distill_objectives import HeadDistillObjective, _teacher_input
    from dinoflow.train.pretrain_objective import PretrainObjective
    from dinoflow.train.recipe_losses import RecipeLosses

    k = 4096
    cfg = _distill_cfg(
        tmp_path,
        image_folder,
        f"pretrain.head={{out_dim: {k}, ibot_out_dim: {k}, hidden_dim: 32, bottleneck_dim: 16}}",
        f"distill.loss.centering={centering}",
        f"distill.teacher={tmp_path / 'teacher'}",
    )
    PretrainObjective(cfg.pretrain, torch.device("cpu")).export(tmp_path / "teacher")
    (tmp_path / "teacher" / "train_config.yaml").write_text(dump_config(cfg.pretrain))
    obj = HeadDistillObjective(cfg.distill, torch.device("cpu"))
    images = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8)
    v = obj.views(images, 0, 0)
    s = {"teacher_temp": 0.05}
    n_rows = 16 * 49  # 2 global crops × 8 images × a 7×7 student grid
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss, terms = obj.loss(obj.student, v, s)
    loss.backward()
    assert max(saved) < n_rows * k / 8
    # the same loss, materialised: teacher patch logits resampled to the student's grid, [M, K] targets
    ref = RecipeLosses(cfg.distill.loss, k, k, torch.device("cpu"))
    with torch.no_grad():
        tg = _teacher_input(v["global_crops"], 7)
        t = obj.teacher(tg, patch_index=torch.arange(16 * 16))
        p_logits = resample_tokens(t["patch_logits"].view(16, 16, k), (4, 4), (7, 7)).flatten(0, 1)
        cls_p = ref.teacher_cls_probs(torch.cat(t["g_cls_logits"].chunk(2)[::-1]), 0.05)
        patch_p = ref.teacher_patch_targets({"patch_logits": p_logits}, 0.05, torch.tensor([n_rows]))
    out = obj.student(v["global_crops"], v["local_crops"], patch_index=torch.arange(n_rows))
    _, want = ref.student_terms(out, cls_p, patch_p, n_local=2, n_global=16, masks_weight=torch.full((n_rows,), 1 / 49))
    for name in ("ibot", "dino_global", "dino_local"):
        assert float(terms[name]) == pytest.approx(float(want[name]), rel=1e-5), name


def test_heads_mode_student_learns_the_teachers_targets(tmp_path):
    """A few optimiser steps on one batch lower the heads-mode loss and each of its teacher-matching
    terms (DINO on CLS tokens, iBOT on every patch token), while the teacher stays as loaded."""
    from dinoflow.config import dump_config
    from dinoflow.train.distill_objectives import HeadDistillObjective
    from dinoflow.train.pretrain_objective import PretrainObjective

    cfg = _distill_cfg(tmp_path, tmp_path / "unused", f"distill.teacher={tmp_path / 'teacher'}")
    PretrainObjective(cfg.pretrain, torch.device("cpu")).export(tmp_path / "teacher")
    (tmp_path / "teacher" / "train_config.yaml").write_text(dump_config(cfg.pretrain))
    obj = HeadDistillObjective(cfg.distill, torch.device("cpu"))
    teacher_before = {k: t.clone() for k, t in obj.teacher.state_dict().items()}
    ema_before = {k: t.clone() for k, t in obj.student_ema.state_dict().items()}
    v = obj.views(
        torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), 0, 0
    )
    opt = torch.optim.AdamW(obj.student.parameters(), lr=1e-3)
    history = []
    for _ in range(6):
        loss, terms = obj.loss(obj.student, v, {"teacher_temp": 0.04})
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step(obj.student, {})
        history.append({"loss": float(loss.detach()), **{k: float(t) for k, t in terms.items()}})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.9 * first["loss"], history
    for term in ("dino_global", "dino_local", "ibot"):
        assert last[term] < first[term], (term, history)
    assert all(torch.equal(t, teacher_before[k]) for k, t in obj.teacher.state_dict().items())
    assert any(not torch.equal(t, ema_before[k]) for k, t in obj.student_ema.state_dict().items())  # the EMA follows


def test_a_missing_feature_teacher_is_named(tmp_path):
    from dinoflow.train.distill_objectives import load_feature_teacher

    cfg = load_config(None, [f"distill.teacher={tmp_path}/absent", "distill.mode=features"]).distill
    with pytest.raises(DinoflowError) as e:
        load_feature_teacher(cfg, torch.device("cpu"))
    assert str(e.value) == (
        f"distill.teacher {tmp_path}/absent/backbone.pth not found: "
        "give a backbone .pth (official hub file or a dinoflow export)"
    )


def test_one_global_crop_feature_step_pairs_every_crop_with_its_own_image(tmp_path):
    from dinoflow.config import DistillConfig
    from dinoflow.train.distill_objectives import FeatureDistillObjective

    torch.manual_seed(0)
    export_backbone(build_backbone("vit_mini", patch_size=7, img_size=28, layerscale_init=1.0), tmp_path / "t")
    cfg = DistillConfig(
        mode="features",
        teacher=str(tmp_path / "t"),
        student={"arch": "vit_pico", "patch_size": 7, "img_size": 28},
        crops={"global_size": 28, "local_size": 14, "n_global": 1, "n_local": 2},
        seed=0,
    )
    obj = FeatureDistillObjective(cfg, torch.device("cpu"))
    images = torch.randint(0, 256, (3, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    v = obj.views(images, 0, 0)
    assert v["global_crops"].shape == (3, 3, 28, 28) and v["local_crops"].shape == (6, 3, 14, 14)
    t = obj.teacher_pass(v)
    assert t["cls"].shape[0] == 3  # one teacher crop per image
    targets = obj.targets(v, t, {})
    args, kwargs = obj.student_inputs(v)
    out = obj.student(*args, **kwargs)
    loss, terms = obj.terms(out, v, targets, {})
    # crop-major: local crop c of image i is row c·B + i, and its target is image i's CLS
    torch.testing.assert_close(terms["local_cls"], cosine_distance(out["l_cls"], torch.cat([t["cls"], t["cls"]])))
    torch.testing.assert_close(terms["cls"], cosine_distance(out["g_cls"], t["cls"]))
    torch.testing.assert_close(loss, terms["cls"] + terms["local_cls"] + terms["patch"])
