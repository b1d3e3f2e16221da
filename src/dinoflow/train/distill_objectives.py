"""Distillation objectives (DINOv2 paper §5, plus a head-free mode for backbone-only teachers).

`HeadDistillObjective` — the paper's recipe: a frozen teacher (backbone + heads of a dinoflow
pretraining run) provides the targets; a smaller student with fresh heads (same prototype
count) learns DINO on CLS tokens (all student crops vs the teacher's other global crop), iBOT on
ALL patch tokens of the two global crops (no masking), and KoLeo; no stochastic depth. An EMA of
the student is kept and exported (the paper ships the EMA).

`FeatureDistillObjective` — for teachers without heads (official hub files, any export): the
student, through a linear projection to the teacher's width, matches the teacher's normalised
CLS token (global and local crops → the teacher's CLS of the same image's global crops) and its
patch tokens on the global crops. The loss is a cosine distance, 1 − cos(proj(s), t): it
ignores the teacher's feature scale (hub features have large, layer-dependent norms) and puts
the student's capacity on directions, which is what k-NN and linear probes on normalised
features use. With `crops.n_global: 1` teacher and student see one global crop of each image
(the same one): the teacher's work halves, and with `crops.n_local: 0` the step is one view per
image, as feature-distillation tools train.

When the token grids differ (other patch size or resolution), teacher patch targets are
resampled to the student's grid (bilinear on the spatial map; probabilities renormalised).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from dinoflow.config import DistillConfig, HeadConfig, ModelConfig, PretrainConfig, stage_seed
from dinoflow.errors import DinoflowError
from dinoflow.models import backbone_from_config, heads_from_config
from dinoflow.models.artifact import BackboneArtifact
from dinoflow.models.weights import BACKBONE_FILE, read_weights
from dinoflow.models.wrappers import unwrap
from dinoflow.train.ema import ema_update, frozen_copy
from dinoflow.train.export import export_network
from dinoflow.train.objective import Batch, Schedule
from dinoflow.train.recipe_losses import RecipeLosses
from dinoflow.train.ssl_net import SSLNet
from dinoflow.train.views import Views

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer


def resample_tokens(tokens: torch.Tensor, grid_from: tuple[int, int], grid_to: tuple[int, int]) -> torch.Tensor:
    """tokens [B, h·w, C] on grid_from → [B, h'·w', C] on grid_to (bilinear, align_corners=False)."""
    if grid_from == grid_to:
        return tokens
    b, n, c = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, c, *grid_from)
    x = F.interpolate(x, size=grid_to, mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)


def _student_model_cfg(cfg: DistillConfig) -> ModelConfig:
    # the recipe removes stochastic depth for distillation
    return cfg.student.model_copy(update={"drop_path_rate": 0.0})


def _teacher_input(crops: torch.Tensor, teacher_patch: int) -> torch.Tensor:
    """Resize crops so the teacher's patch size tiles them (nearest multiple, at least one patch)."""
    side = crops.shape[-1]
    t_side = max(teacher_patch, round(side / teacher_patch) * teacher_patch)
    if t_side == side:
        return crops
    return F.interpolate(crops, size=(t_side, t_side), mode="bicubic", align_corners=False)


class _DistillBase:
    """Student EMA bookkeeping and export, shared by both modes, and the step as four parts that
    a family of students (`distill_family.py`) calls with one teacher pass for all of them:
    `teacher_pass` (the frozen teacher, once per batch), `targets` (this student's, from it),
    `student_inputs` (the student's forward arguments) and `terms` (the loss from its outputs)."""

    cfg: DistillConfig
    student: nn.Module
    student_ema: nn.Module
    ema_updates: torch.Tensor  # 0-d float64: EMA updates so far (checkpointed)

    def train_module(self) -> nn.Module:
        return self.student

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"student_ema": self.student_ema}

    def after_step(self, net: nn.Module, s: Schedule) -> None:
        self.update_ema(unwrap(net))

    def update_ema(self, student: nn.Module) -> None:
        # Warm the EMA up (momentum min(m, (1+n)/(10+n)) after n updates): with a fixed 0.999
        # a short run would export a student that is still mostly its random init.
        self.ema_updates += 1
        n = float(self.ema_updates)
        ema_update(self.student_ema, student, min(self.cfg.student_ema, (1 + n) / (10 + n)))

    def _ema_state(self) -> dict[str, torch.Tensor]:
        return {"student_ema_updates": self.ema_updates}

    def export(self, out_dir: str | Path, is_main: bool = True) -> None:
        """Collective under FSDP; rank 0 writes the student EMA's backbone.pth + config.yaml."""
        export_network(self.student_ema, _student_model_cfg(self.cfg), out_dir, is_main)

    def teacher_pass(self, v: Batch) -> dict[str, Any]:
        raise NotImplementedError

    def targets(self, v: Batch, t: dict[str, Any], s: Schedule) -> dict[str, Any]:
        raise NotImplementedError

    def student_inputs(self, v: Batch) -> tuple[tuple, dict[str, Any]]:
        raise NotImplementedError

    def terms(
        self, out: Any, v: Batch, targets: dict[str, Any], s: Schedule
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def loss(self, net: nn.Module, v: Batch, s: Schedule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = self.targets(v, self.teacher_pass(v), s)
        args, kwargs = self.student_inputs(v)
        return self.terms(net(*args, **kwargs), v, targets, s)


HeadTeacher = tuple[SSLNet, HeadConfig, ModelConfig]


def load_head_teacher(teacher_dir: str, device: torch.device) -> HeadTeacher:
    """A dinoflow pretraining output dir → frozen SSLNet (backbone + heads) and its configs."""
    d = Path(teacher_dir)
    need = [d / BACKBONE_FILE, d / "heads.pth", d / "train_config.yaml"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise DinoflowError(
            f"distill.mode=heads needs a dinoflow pretraining output in {d} (missing: {', '.join(missing)}); "
            "run `dinoflow pretrain`, or use distill.mode=features with a backbone file"
        )
    pcfg = PretrainConfig.model_validate(yaml.safe_load((d / "train_config.yaml").read_text()))
    backbone = BackboneArtifact(d / BACKBONE_FILE).load()  # its presence checked above, with the heads
    dino, ibot = heads_from_config(backbone.embed_dim, pcfg.head)
    heads = read_weights(d / "heads.pth")
    dino.load_state_dict(heads["dino_head"])
    if ibot is not None:
        ibot.load_state_dict(heads["ibot_head"])
    net = SSLNet(backbone, dino, ibot).to(device)
    net.requires_grad_(False)
    net.eval()
    return net, pcfg.head, pcfg.model


class HeadDistillObjective(_DistillBase):
    def __init__(self, cfg: DistillConfig, device: torch.device, teacher: "HeadTeacher | None" = None):
        self.cfg = cfg
        self.shared_teacher = teacher or load_head_teacher(cfg.teacher, device)
        self.teacher, head_cfg, self.teacher_model_cfg = self.shared_teacher
        torch.manual_seed(cfg.seed)
        backbone = backbone_from_config(_student_model_cfg(cfg))
        dino, ibot = heads_from_config(backbone.embed_dim, head_cfg)  # same prototypes as the teacher's
        self.student = SSLNet(backbone, dino, ibot).to(device)
        self.student_ema = frozen_copy(self.student)
        self.ema_updates = torch.zeros((), dtype=torch.float64)
        ibot_dim = head_cfg.ibot_out_dim if head_cfg.separate_ibot_head else head_cfg.out_dim
        self.losses = RecipeLosses(cfg.loss, head_cfg.out_dim, ibot_dim, device)
        self.views = Views(cfg.crops, None, cfg.student.patch_size, stage_seed(cfg.seed))
        self.s_patch, self.t_patch = cfg.student.patch_size, self.teacher_model_cfg.patch_size

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {**self.losses.state(), **self._ema_state()}

    def _grid(self, g: torch.Tensor) -> tuple[int, int]:
        return (g.shape[-2] // self.s_patch, g.shape[-1] // self.s_patch)

    @torch.no_grad()
    def teacher_pass(self, v: Batch) -> dict[str, Any]:
        g = v["global_crops"]
        tg = _teacher_input(g, self.t_patch)
        t_grid = (tg.shape[-2] // self.t_patch, tg.shape[-1] // self.t_patch)
        idx = torch.arange(g.shape[0] * t_grid[0] * t_grid[1], device=g.device)
        return {**self.teacher(tg, patch_index=idx, patch_parts=True), "grid": t_grid}

    @torch.no_grad()
    def targets(self, v: Batch, t: dict[str, Any], s: Schedule) -> dict[str, Any]:
        """iBOT on every patch token of both global crops, through the heads' factors: the
        [2B·N, K] logits (student and teacher) exist only one chunk at a time."""
        g = v["global_crops"]
        n_img, s_grid = g.shape[0], self._grid(g)
        cls_logits = torch.cat(t["g_cls_logits"].chunk(2)[::-1])
        # logits are linear in z, so resampling z to the student's grid resamples the logits
        z_t = resample_tokens(t["patch_z"].view(n_img, -1, t["patch_z"].shape[-1]), t["grid"], s_grid).flatten(0, 1)
        n_patch = torch.tensor([n_img * s_grid[0] * s_grid[1]], device=g.device)
        cls_p = self.losses.teacher_cls_probs(cls_logits, s["teacher_temp"])
        patch_t = self.losses.teacher_patch_targets(
            {"patch_z": z_t, "patch_w": t["patch_w"]}, s["teacher_temp"], n_patch
        )
        return {"cls_p": cls_p, "patch_t": patch_t}

    def student_inputs(self, v: Batch) -> tuple[tuple, dict[str, Any]]:
        g = v["global_crops"]
        n_s = self._grid(g)[0] * self._grid(g)[1]
        idx = torch.arange(g.shape[0] * n_s, device=g.device)
        return (g, v["local_crops"]), {"masks": None, "patch_index": idx, "patch_parts": True}

    def terms(
        self, out: Any, v: Batch, targets: dict[str, Any], s: Schedule
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # no masking: every patch token of both global crops is an iBOT target (weight 1/N each)
        g = v["global_crops"]
        n_img, n_s = g.shape[0], self._grid(g)[0] * self._grid(g)[1]
        n_local = self.cfg.crops.n_local if v["local_crops"] is not None else 0
        weights = torch.full((n_img * n_s,), 1.0 / n_s, device=g.device)
        return self.losses.student_terms(
            out, targets["cls_p"], targets["patch_t"], n_local=n_local, n_global=n_img, masks_weight=weights
        )


class FeatureStudent(nn.Module):
    """Student backbone + linear projections to the teacher's width (CLS and patch tokens)."""

    def __init__(self, backbone: DinoVisionTransformer, teacher_dim: int):
        super().__init__()
        self.backbone = backbone
        self.cls_proj = nn.Linear(backbone.embed_dim, teacher_dim)
        self.patch_proj = nn.Linear(backbone.embed_dim, teacher_dim)

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """global_crops [G,3,S,S] (G = n_global·B), local_crops [L,3,s,s] → g_cls [G,Dt], g_patch [G,N,Dt],
        l_cls [L,Dt] (projected to the teacher's width Dt)."""
        if local_crops is not None:
            g, loc = self.backbone.forward_features_list([global_crops, local_crops], [None, None])
        else:
            g, loc = self.backbone.forward_features(global_crops), None
        out = {"g_cls": self.cls_proj(g["x_norm_clstoken"]), "g_patch": self.patch_proj(g["x_norm_patchtokens"])}
        if loc is not None:
            out["l_cls"] = self.cls_proj(loc["x_norm_clstoken"])
        return out

    def param_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "cls_proj": self.cls_proj, "patch_proj": self.patch_proj}


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over rows of 1 − cos(a_i, b_i); a, b [..., C]."""
    return (1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


def load_feature_teacher(cfg: DistillConfig, device: torch.device) -> DinoVisionTransformer:
    """distill.teacher (a backbone .pth or its folder) → the frozen backbone, on `device`."""
    artifact = BackboneArtifact.open(
        cfg.teacher, "distill.teacher {path} not found: give a backbone .pth (official hub file or a dinoflow export)"
    )
    overrides = {
        k: v
        for k, v in {
            "arch": cfg.teacher_arch,
            "patch_size": cfg.teacher_patch_size,
            "num_register_tokens": cfg.teacher_num_register_tokens,
        }.items()
        if v is not None
    }
    teacher = artifact.load(**overrides).to(device)
    teacher.requires_grad_(False)
    return teacher.eval()


class FeatureDistillObjective(_DistillBase):
    def __init__(self, cfg: DistillConfig, device: torch.device, teacher: DinoVisionTransformer | None = None):
        self.cfg = cfg
        self.teacher = self.shared_teacher = teacher if teacher is not None else load_feature_teacher(cfg, device)
        torch.manual_seed(cfg.seed)
        self.student = FeatureStudent(backbone_from_config(_student_model_cfg(cfg)), self.teacher.embed_dim).to(device)
        self.student_ema = frozen_copy(self.student)
        self.ema_updates = torch.zeros((), dtype=torch.float64)
        self.views = Views(cfg.crops, None, cfg.student.patch_size, stage_seed(cfg.seed))
        self.s_patch, self.t_patch = cfg.student.patch_size, self.teacher.patch_size

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self._ema_state()

    @torch.no_grad()
    def teacher_pass(self, v: Batch) -> dict[str, Any]:
        tg = _teacher_input(v["global_crops"], self.t_patch)
        t = self.teacher.forward_features(tg)
        grid = (tg.shape[-2] // self.t_patch, tg.shape[-1] // self.t_patch)
        return {"cls": t["x_norm_clstoken"], "patch": t["x_norm_patchtokens"], "grid": grid}

    @torch.no_grad()
    def targets(self, v: Batch, t: dict[str, Any], s: Schedule) -> dict[str, Any]:
        g = v["global_crops"]
        s_grid = (g.shape[-2] // self.s_patch, g.shape[-1] // self.s_patch)
        return {"cls": t["cls"], "patch": resample_tokens(t["patch"], t["grid"], s_grid)}

    def student_inputs(self, v: Batch) -> tuple[tuple, dict[str, Any]]:
        return (v["global_crops"], v["local_crops"]), {}

    def terms(
        self, out: Any, v: Batch, targets: dict[str, Any], s: Schedule
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t_cls = targets["cls"]
        terms = {
            "cls": cosine_distance(out["g_cls"], t_cls),
            "patch": cosine_distance(out["g_patch"], targets["patch"]),
        }
        if "l_cls" in out:
            # each local crop → the mean of the teacher's global CLS tokens of the same image
            t_img = t_cls.unflatten(0, (self.cfg.crops.n_global, -1)).mean(0)
            n_local = out["l_cls"].shape[0] // t_img.shape[0]
            terms["local_cls"] = cosine_distance(out["l_cls"], t_img.repeat(n_local, 1))
        loss = terms["cls"] + terms.get("local_cls", 0.0) + self.cfg.feature_patch_weight * terms["patch"]
        return loss, {k: x.detach() for k, x in terms.items()}
