"""iBOT loss on masked patch tokens: the student predicts the teacher's targets at masked positions.

The training step calls `teacher_targets` on the teacher's picked patch tokens, then
`masked_loss` on the student's; the module holds the centre between steps.

Each masked token is weighted 1 / (number of masked tokens in its image) and the sum is divided
by the number of images, so every image counts equally whatever its mask ratio (images without
masked tokens contribute 0 but still count in the denominator, as in DINOv2).

Teacher normalisations mirror `DINOLoss`: softmax centering with an EMA centre, or Sinkhorn-Knopp
over all masked tokens of all ranks. Unlike the official code, Sinkhorn-Knopp here runs without a
process group (the official calls `all_reduce` unconditionally).

Centre update (the official behaviour, made explicit): DINOv2 passes the masked teacher tokens
as a [1, M, K] tensor, so its `mean(1)` averages over masked tokens; the centre therefore tracks
the per-prototype mean over masked teacher tokens. `update_center` accepts
- [M, K] masked tokens: mean over all masked tokens of all ranks (token-weighted; equals the
  official single-process value, and the official multi-rank value when ranks hold equal M), or
- [B, N, K] tokens: the official reduction verbatim — mean over N per image, then over images.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dinoflow.distributed.collectives import AsyncMean, ema_update
from dinoflow.losses.sinkhorn import sinkhorn_knopp, sinkhorn_scalings
from dinoflow.losses.soft_ce import prototype_cross_entropy, soft_cross_entropy

# Targets of the picked patch tokens: materialised [M, K], or (row start, end) → [end − start, K].
PatchTargets = torch.Tensor | Callable[[int, int], torch.Tensor]


def _rows_of(targets: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Materialised targets [M, K] read by rows, as the chunked cross-entropy asks for them."""
    return lambda a, b: targets[a:b]


class iBOTPatchLoss(nn.Module):  # the official name, where DINOv2 users look for it
    """Masked-patch cross-entropy between teacher targets and student predictions.

    Args:
        patch_out_dim: number of prototypes K of the (shared or separate) iBOT head.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the softmax-centering centre.
    Buffers:
        center: [1, 1, K] fp32 (same name and shape as the official `ibot_patch_loss.center`).
    """

    center: torch.Tensor  # a registered buffer: saved with the state, moved with the module

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if patch_out_dim < 1:
            raise ValueError(f"patch_out_dim must be >= 1, got {patch_out_dim}")
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))
        # pending centre update: [1, K + 1] = (sum of per-item means or tokens, item count)
        self._batch_mean = AsyncMean()

    # ------------------------------------------------------------------ teacher targets

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """softmax((tokens - center) / teacher_temp) over prototypes; output has the input's shape.

        Args:
            teacher_patch_tokens: [..., K], e.g. [M, K] masked tokens or [B, N, K].
        """
        self.apply_center_update()
        center = self.center.reshape(-1).to(teacher_patch_tokens.device)
        return F.softmax((teacher_patch_tokens - center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | int | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets over all masked tokens of all ranks.

        Args:
            teacher_output: [M_local, K] teacher outputs at masked positions.
            n_masked_patches_tensor: this rank's masked-token count (long [1]; summed over ranks
                here without modifying the caller's tensor); defaults to M_local.
        Returns:
            [M_local, K] fp32 targets; each row sums to 1.
        """
        return sinkhorn_knopp(
            teacher_output, teacher_temp, n_iterations=n_iterations, n_samples=n_masked_patches_tensor
        )

    @torch.no_grad()
    def teacher_targets(
        self,
        teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        teacher_temp: float,
        centering: str,
        n_iterations: int = 3,
        n_masked_patches: torch.Tensor | int | None = None,
    ) -> PatchTargets:
        """The recipe's targets for the teacher's picked patch tokens (softmax centering queues
        this batch's centre update; Sinkhorn-Knopp runs over the tokens of all ranks).

        Args:
            teacher: [M, K] patch logits, or their factors (z [M, d], w [K, d]): logits = z @ wᵀ,
                never materialised whole (heads-mode distillation picks every patch token).
            centering: "softmax" or "sinkhorn_knopp".
            n_masked_patches: this rank's token count for Sinkhorn-Knopp (defaults to M).
        Returns:
            [M, K] fp32 targets for logits; for factors a deterministic (a, b) → [b − a, K]
            function (recomputed chunk by chunk). Rows sum to 1.
        """
        if centering not in ("softmax", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'softmax' or 'sinkhorn_knopp', got {centering!r}")
        if isinstance(teacher, torch.Tensor):
            if centering == "softmax":
                p = self.softmax_center_teacher(teacher, teacher_temp)
                self.update_center(teacher)
                return p
            return self.sinkhorn_knopp_teacher(teacher, teacher_temp, n_masked_patches, n_iterations)
        z, w = teacher
        dev = z.device.type
        dtype = (
            torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(z.dtype, w.dtype)
        )
        zc, wc = z.to(dtype), w.to(dtype)

        def logits(a: int, b: int) -> torch.Tensor:
            return (zc[a:b] @ wc.t()).float()

        if centering == "softmax":
            self.apply_center_update()
            center = self.center.reshape(-1).clone()  # fixed for this step's forward and backward
            self.update_center_from_sum(z.float().sum(0) @ w.float().t(), z.shape[0])
            return lambda a, b: torch.softmax((logits(a, b) - center) / teacher_temp, dim=-1)
        r, c = sinkhorn_scalings(
            lambda a, b: logits(a, b).div_(teacher_temp),
            z.shape[0],
            w.shape[0],
            z.device,
            n_iterations,
            n_samples=n_masked_patches,
        )
        return lambda a, b: logits(a, b).div_(teacher_temp).add_(r[a:b, None]).add_(c).exp_()

    # ------------------------------------------------------------------ loss

    def masked_loss(
        self,
        student: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        teacher_targets: PatchTargets,
        masks_weight: torch.Tensor,
        n_images: int,
    ) -> torch.Tensor:
        """-Σ_i w_i · Σ_k t[i, k] · log_softmax(s_i / τ)_k / n_images over the picked tokens i.

        With w_i = 1 / (picked tokens in token i's image), every image counts equally whatever its
        mask ratio; images without picked tokens add 0 but count in n_images (as in DINOv2).

        Args:
            student: [M', K] logits of the picked tokens (M' >= M: rows past M are buffer padding,
                ignored), or their factors (z [M, d], w [K, d]), never materialised whole.
            teacher_targets: [M'', K] targets (M'' >= M), or an (a, b) → [b − a, K] function.
            masks_weight: [M] weight of each picked token; M is its length, a shape, so nothing
                reads a device value (a host sync on a GPU, a break in a compiled graph).
            n_images: the number of images (crops) the tokens come from.
        Returns:
            scalar fp32, differentiable in the student's logits (or factors).
        """
        m = masks_weight.shape[0]
        weights = masks_weight / n_images
        if isinstance(student, tuple):
            z, w = student
            if z.shape[0] != m:
                raise ValueError(f"{z.shape[0]} student feature rows but {m} mask weights: one weight per picked token")
            fn = teacher_targets if callable(teacher_targets) else _rows_of(teacher_targets)
            return prototype_cross_entropy(z, w, fn, self.student_temp, weights)
        targets = teacher_targets if isinstance(teacher_targets, torch.Tensor) else teacher_targets(0, m)
        if student.shape[0] < m or targets.shape[0] < m:
            raise ValueError(
                f"{student.shape[0]} student rows and {targets.shape[0]} target rows but {m} mask weights: "
                "the token buffers must hold at least one row per weight (rows past the weights are padding)"
            )
        return soft_cross_entropy(student[:m], targets[:m], self.student_temp, weights)

    # ------------------------------------------------------------------ centre EMA

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """Queue an EMA update of the centre (see the module docstring for the two input layouts).

        Args:
            teacher_patch_tokens: [M, K] masked teacher tokens, or [B, N, K] tokens.
        """
        self.reduce_center_update(teacher_patch_tokens)

    @torch.no_grad()
    def reduce_center_update(self, teacher_patch_tokens: torch.Tensor) -> None:
        """Start summing (items, count) across ranks; `apply_center_update` finishes."""
        x = teacher_patch_tokens
        if x.ndim not in (2, 3) or x.shape[-1] != self.patch_out_dim:
            raise ValueError(
                f"teacher_patch_tokens must be [M, {self.patch_out_dim}] or [B, N, {self.patch_out_dim}], "
                f"got {tuple(x.shape)}"
            )
        self.apply_center_update()  # never drop an update that was queued but not yet applied
        x = x.float()
        self._batch_mean.start(x if x.ndim == 2 else x.mean(dim=1))  # tokens, or per-image token means

    @torch.no_grad()
    def update_center_from_sum(self, total: torch.Tensor, count: int | torch.Tensor) -> None:
        """Queue the centre update of `count` masked tokens given only their sum [K] (or [1, K]),
        e.g. Σ z @ Wᵀ when the [M, K] tokens are never materialised."""
        if total.numel() != self.patch_out_dim:
            raise ValueError(f"total must hold {self.patch_out_dim} values, got {tuple(total.shape)}")
        self.apply_center_update()
        self._batch_mean.start_sum(total, count)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """center ← m·center + (1 − m)·(global mean item), if an update is pending."""
        # unchanged when nothing is queued, or no masked token anywhere this step
        ema_update(self.center, self._batch_mean.take(), self.center_momentum)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # A checkpoint must not lose an update that is queued but not yet applied.
        self.apply_center_update()
        super()._save_to_state_dict(destination, prefix, keep_vars)
