"""DINO + iBOT + KoLeo with the recipe's teacher normalisations and scalings, shared by pretraining
and head-based distillation.

Teacher targets for patch tokens come in two forms:
- materialised [M, K] (pretraining: M masked tokens), from `patch_logits`;
- a function of the row range, recomputed chunk by chunk from the head's factors
  (`patch_z` [M, d] @ `patch_w` [K, d]ᵀ) with Sinkhorn-Knopp's scaling vectors or the centre
  (heads-mode distillation, where M is every patch token of every global crop).
The cross-entropies are the fused, chunked ones of `dinoflow.losses.soft_ce`. Terms come back
as detached device tensors: nothing here waits for the device.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dinoflow.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinoflow.losses.sinkhorn import sinkhorn_scalings
from dinoflow.losses.soft_ce import prototype_cross_entropy, soft_cross_entropy

PatchTargets = torch.Tensor | Callable[[int, int], torch.Tensor]


def _matmul_dtype(z: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    dev = z.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(z.dtype, w.dtype)


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
        if self.cfg.centering == "softmax":
            p = self.dino.softmax_center_teacher(cls_logits, teacher_temp=temp)
            self.dino.update_center(cls_logits)
        else:
            p = self.dino.sinkhorn_knopp_teacher(
                cls_logits, teacher_temp=temp, n_iterations=self.cfg.sinkhorn_iterations
            )
        return p.view(2, -1, p.shape[-1])

    @torch.no_grad()
    def teacher_patch_targets(
        self, t: dict[str, torch.Tensor], temp: float, n_patches: torch.Tensor | int
    ) -> PatchTargets:
        """Targets for the teacher's picked patch tokens: [M, K] from t["patch_logits"], or a
        (start, end) → [end − start, K] function from t["patch_z"], t["patch_w"]."""
        if "patch_logits" in t:
            logits = t["patch_logits"]
            if self.cfg.centering == "softmax":
                p = self.ibot.softmax_center_teacher(logits, teacher_temp=temp)
                self.ibot.update_center(logits)
                return p
            return self.ibot.sinkhorn_knopp_teacher(
                logits, teacher_temp=temp, n_masked_patches_tensor=n_patches, n_iterations=self.cfg.sinkhorn_iterations
            )
        z, w = t["patch_z"], t["patch_w"]
        dtype = _matmul_dtype(z, w)
        zc, wc = z.to(dtype), w.to(dtype)

        def logits(a: int, b: int) -> torch.Tensor:
            return (zc[a:b] @ wc.t()).float()

        if self.cfg.centering == "softmax":
            self.ibot.apply_center_update()
            center = self.ibot.center.reshape(-1).clone()  # fixed for this step's forward and backward
            self.ibot.update_center_from_sum(z.float().sum(0) @ w.float().t(), z.shape[0])
            return lambda a, b: torch.softmax((logits(a, b) - center) / temp, dim=-1)
        r, c = sinkhorn_scalings(
            lambda a, b: logits(a, b).div_(temp),
            z.shape[0],
            w.shape[0],
            z.device,
            self.cfg.sinkhorn_iterations,
            n_samples=n_patches,
        )
        return lambda a, b: logits(a, b).div_(temp).add_(r[a:b, None]).add_(c).exp_()

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
        tau = lc.student_temp
        b = cls_p.shape[1]
        n_terms = 2 * n_local + 2  # (student crop, other teacher crop) pairs
        terms: dict[str, torch.Tensor] = {}
        if n_local:
            # every local crop against both teacher crops of its image: Σ_t t·log p = (Σ_t t)·log p
            index = torch.arange(n_local * b, device=cls_p.device) % b
            terms["dino_local"] = (
                soft_cross_entropy(out["l_cls_logits"], cls_p[0] + cls_p[1], tau, 1.0 / b, target_index=index) / n_terms
            )
        terms["dino_global"] = (
            soft_cross_entropy(out["g_cls_logits"], cls_p.flatten(0, 1), tau, 1.0 / (2 * b)) * 2 / n_terms
        )
        terms["koleo"] = sum(self.koleo(p) for p in out["g_cls"].chunk(2))
        # official scaling: ×2 (both global crops together) × 1/2 (= 1/n_global) → ×1
        weights = masks_weight / n_global
        if "patch_z" in out:
            terms["ibot"] = prototype_cross_entropy(out["patch_z"], out["patch_w"], patch_t, tau, weights)
        else:
            m = masks_weight.shape[0]
            terms["ibot"] = soft_cross_entropy(out["patch_logits"][:m], patch_t[:m], tau, weights)
        loss = (
            lc.dino_weight * (terms.get("dino_local", 0.0) + terms["dino_global"])
            + lc.koleo_weight * terms["koleo"]
            + lc.ibot_weight * terms["ibot"]
        )
        return loss, {k: t.detach() for k, t in terms.items()}
