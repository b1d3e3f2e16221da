"""DINO + iBOT + KoLeo with the recipe's teacher normalisations and scalings, shared by pretraining
and head-based distillation.

The teacher targets (centering or Sinkhorn-Knopp) and the cross-entropies are the loss modules'
(`DINOLoss`, `iBOTPatchLoss`); this class picks them per the loss config and applies the official
scalings. Patch targets are [M, K] when pretraining (M masked tokens) or a function of the row
range when heads-mode distillation picks every patch token (see `iBOTPatchLoss.teacher_targets`).
Terms come back as detached device tensors: nothing here waits for the device.
"""

from __future__ import annotations

from typing import Any

import torch

from dinoflow.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinoflow.losses.ibot import PatchTargets


class RecipeLosses:
    def __init__(self, loss_cfg, cls_dim: int, patch_dim: int, device: torch.device):
        self.cfg = loss_cfg
        self.dino = DINOLoss(cls_dim, student_temp=loss_cfg.student_temp, center_momentum=loss_cfg.center_momentum).to(
            device
        )
        self.ibot = iBOTPatchLoss(
            patch_dim, student_temp=loss_cfg.student_temp, center_momentum=loss_cfg.center_momentum
        ).to(device)
        self.koleo = KoLeoLoss()

    def state(self) -> dict[str, torch.Tensor]:
        # The centre update of the step that just ended is still queued (it is applied lazily when
        # the next targets are computed): apply it now, or a checkpoint holds the centre one step
        # behind and a resumed run's next targets differ from the uninterrupted run's.
        self.dino.apply_center_update()
        self.ibot.apply_center_update()
        return {"dino_center": self.dino.center, "ibot_center": self.ibot.center}

    # ------------------------------------------------------------------ teacher

    @torch.no_grad()
    def teacher_cls_probs(self, cls_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """cls_logits [2B, K] (already crop-swapped) → targets [2, B, K]."""
        p = self.dino.teacher_targets(cls_logits, temp, self.cfg.centering, self.cfg.sinkhorn_iterations)
        return p.view(2, -1, p.shape[-1])

    @torch.no_grad()
    def teacher_patch_targets(
        self, t: dict[str, torch.Tensor], temp: float, n_patches: torch.Tensor | int
    ) -> PatchTargets:
        """Targets for the teacher's picked patch tokens: [M, K] from t["patch_logits"], or a
        (start, end) → [end − start, K] function from t["patch_z"], t["patch_w"]."""
        teacher = t["patch_logits"] if "patch_logits" in t else (t["patch_z"], t["patch_w"])
        return self.ibot.teacher_targets(teacher, temp, self.cfg.centering, self.cfg.sinkhorn_iterations, n_patches)

    # ------------------------------------------------------------------ student

    def student_terms(
        self,
        out: dict[str, torch.Tensor],
        cls_p: torch.Tensor,
        patch_t: PatchTargets,
        *,
        n_local: int,
        n_global: int,
        masks_weight: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The weighted total and its terms (detached), with the official scalings.

        cls_p [2, B, K] teacher CLS targets; patch_t the patch targets; n_global the number of
        global crops (2B; iBOT averages over them); masks_weight [M] the weight of each picked
        patch token (1 / picked tokens in its crop).
        """
        lc = self.cfg
        n_terms = 2 * n_local + 2  # (student crop, other teacher crop) pairs
        terms: dict[str, torch.Tensor] = {}
        if n_local:
            terms["dino_local"] = self.dino.local_crops_loss(out["l_cls_logits"], cls_p) / n_terms
        terms["dino_global"] = self.dino.global_crops_loss(out["g_cls_logits"], cls_p) / n_terms
        terms["koleo"] = sum(self.koleo(p) for p in out["g_cls"].chunk(2))
        # official scaling: ×2 (both global crops together) × 1/2 (= 1/n_global) → ×1
        student = (out["patch_z"], out["patch_w"]) if "patch_z" in out else out["patch_logits"]
        terms["ibot"] = self.ibot.masked_loss(student, patch_t, masks_weight, n_global)
        loss = (
            lc.dino_weight * (terms.get("dino_local", 0.0) + terms["dino_global"])
            + lc.koleo_weight * terms["koleo"]
            + lc.ibot_weight * terms["ibot"]
        )
        return loss, {k: t.detach() for k, t in terms.items()}
