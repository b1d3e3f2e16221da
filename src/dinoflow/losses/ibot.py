"""iBOT loss on masked patch tokens: the student predicts the teacher's targets at masked positions.

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

import torch
import torch.nn.functional as F
from torch import nn

from dinoflow.distributed.collectives import AsyncMean, ema_update
from dinoflow.losses.sinkhorn import sinkhorn_knopp
from dinoflow.losses.soft_ce import soft_cross_entropy


class iBOTPatchLoss(nn.Module):  # the official name, where DINOv2 users look for it
    """Masked-patch cross-entropy between teacher targets and student predictions.

    Args:
        patch_out_dim: number of prototypes K of the (shared or separate) iBOT head.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the softmax-centering centre.
    Buffers:
        center: [1, 1, K] fp32 (same name and shape as the official `ibot_patch_loss.center`).
    """

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

    # ------------------------------------------------------------------ loss

    def forward(
        self,
        student_patch_tokens: torch.Tensor,
        teacher_patch_tokens: torch.Tensor,
        student_masks_flat: torch.Tensor,
    ) -> torch.Tensor:
        """Dense form: all tokens in, the mask selects the ones that count.

        Args:
            student_patch_tokens: [B, N, K] student logits.
            teacher_patch_tokens: [B, N, K] teacher targets.
            student_masks_flat: [B, N] bool mask (True = masked).
        Returns:
            scalar: -mean_b (sum_{n masked} ce[b, n] / max(1, #masked in b)).
        """
        if student_masks_flat.shape != student_patch_tokens.shape[:-1]:
            raise ValueError(
                f"student_masks_flat {tuple(student_masks_flat.shape)} must match the tokens' "
                f"[B, N] = {tuple(student_patch_tokens.shape[:-1])}"
            )
        mask = student_masks_flat.float()
        w = mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0) / mask.shape[0]
        return soft_cross_entropy(
            student_patch_tokens.flatten(0, 1),
            teacher_patch_tokens.flatten(0, 1),
            self.student_temp,
            weights=w.flatten(),
        )

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | torch.Tensor | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gathered form: only the masked tokens, in `mask_indices_list` order.

        The real rows are the first M = len(masks_weight): their count is a shape, never read
        from a tensor (reading one would wait for the device and break a compiled graph).

        Args:
            student_patch_tokens_masked: [M', K] student logits (M' >= M: may carry buffer padding).
            teacher_patch_tokens_masked: [M', K] teacher targets.
            student_masks_flat: [B, N] bool mask; gives B and, without `masks_weight`, the weights.
            n_masked_patches: M as an int (checked against the weights), or a tensor (ignored:
                the weights' length is M); required when buffers are padded and no weights are given.
            masks_weight: [M] weight of each masked token, 1 / (#masked in its image).
        Returns:
            scalar fp32: -sum_i w_i · ce_i / B.
        """
        if masks_weight is None:
            per_image = 1.0 / student_masks_flat.sum(-1).clamp(min=1.0)
            masks_weight = per_image.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat.bool()]
        m = masks_weight.shape[0]
        rows = student_patch_tokens_masked.shape[0]
        padded_ok = n_masked_patches is not None and not (isinstance(n_masked_patches, int) and n_masked_patches != m)
        if rows < m or (rows != m and not padded_ok) or teacher_patch_tokens_masked.shape[0] < m:
            raise ValueError(
                f"{rows} masked-token losses but {m} mask weights: pass "
                "n_masked_patches when the token buffers are padded, and weights for the same tokens"
            )
        return soft_cross_entropy(
            student_patch_tokens_masked[:m],
            teacher_patch_tokens_masked[:m],
            self.student_temp,
            weights=masks_weight / student_masks_flat.shape[0],
        )

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
