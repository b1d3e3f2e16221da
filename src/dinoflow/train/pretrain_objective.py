"""The DINOv2 pretraining objective: student and EMA teacher (backbone + DINO head [+ iBOT head]).

DINO on CLS tokens (locals and globals vs the teacher's other global crop), iBOT on masked global
patch tokens, KoLeo on the student's global CLS tokens (`recipe_losses.RecipeLosses`). The
teacher is the EMA of the student; it is what the stage exports.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dinoflow.config import PretrainConfig, stage_seed
from dinoflow.models import backbone_from_config, heads_from_config
from dinoflow.models.weights import save_weights
from dinoflow.models.wrappers import unwrap
from dinoflow.train.ema import ema_update
from dinoflow.train.export import export_network, sub_state_dict
from dinoflow.train.objective import Batch, Schedule
from dinoflow.train.phases import mark
from dinoflow.train.recipe_losses import RecipeLosses
from dinoflow.train.ssl_net import SSLNet
from dinoflow.train.views import Views


class PretrainObjective:
    """An `Objective` (train/objective.py) for `dinoflow pretrain`."""

    def __init__(self, cfg: PretrainConfig, device: torch.device):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        backbone = backbone_from_config(cfg.model)
        self.student = SSLNet(backbone, *heads_from_config(backbone.embed_dim, cfg.head)).to(device)
        # built, not copied: the teacher has no stochastic depth
        t_backbone = backbone_from_config(cfg.model.model_copy(update={"drop_path_rate": 0.0}))
        self.teacher = SSLNet(t_backbone, *heads_from_config(t_backbone.embed_dim, cfg.head)).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        ibot_dim = cfg.head.ibot_out_dim if cfg.head.separate_ibot_head else cfg.head.out_dim
        self.losses = RecipeLosses(cfg.loss, cfg.head.out_dim, ibot_dim, device)
        self.views = Views(cfg.crops, cfg.masks, cfg.model.patch_size, stage_seed(cfg.seed))

    def train_module(self) -> nn.Module:
        return self.student

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.losses.state()

    def loss(self, net: nn.Module, v: Batch, s: Schedule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """v: global_crops [2B,3,G,G], local_crops [nL·B,3,L,L] | None, masks bool [2B,N],
        mask_indices [M], masks_weight [M], n_masked_patches [1] → (loss, terms)."""
        with torch.no_grad():
            t = self.teacher(v["global_crops"], patch_index=v["mask_indices"])
            cls_logits = torch.cat(t["g_cls_logits"].chunk(2)[::-1])  # student crop i ↔ teacher crop 1-i
            cls_p = self.losses.teacher_cls_probs(cls_logits, s["teacher_temp"])
            patch_t = self.losses.teacher_patch_targets(t, s["teacher_temp"], v["n_masked_patches"])
        mark("teacher_centering")
        out = net(v["global_crops"], v["local_crops"], masks=v["masks"], patch_index=v["mask_indices"])
        mark("student_forward")
        n_local = self.cfg.crops.n_local if v["local_crops"] is not None else 0
        loss, terms = self.losses.student_terms(
            out, cls_p, patch_t, n_local=n_local, n_global=v["masks"].shape[0], masks_weight=v["masks_weight"]
        )
        mark("losses")
        return loss, terms

    def after_step(self, net: nn.Module, s: Schedule) -> None:
        ema_update(self.teacher, unwrap(net), s["momentum"])

    def export(self, out_dir: str | Path, is_main: bool = True) -> None:
        """Collective under FSDP (every rank calls it); rank 0 writes the teacher's backbone.pth,
        config.yaml and heads.pth (what heads-mode distillation reads)."""
        sd = export_network(self.teacher, self.cfg.model, out_dir, is_main)
        if sd is None:
            return
        heads = {"dino_head": sub_state_dict(sd, "dino_head.")}
        if self.teacher.ibot_head is not None:
            heads["ibot_head"] = sub_state_dict(sd, "ibot_head.")
        save_weights(heads, f"{out_dir}/heads.pth")
