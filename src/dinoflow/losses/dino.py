"""DINO loss on CLS tokens: cross-entropy between teacher targets and student predictions.

The training step calls `teacher_targets` on the teacher's CLS logits, then `global_crops_loss`
and `local_crops_loss` on the student's; the module holds the centre between steps.

Teacher targets come from one of two normalisations of the teacher head output:
- softmax centering: softmax((t - c) / T) with an EMA centre c (momentum 0.9), and
- Sinkhorn-Knopp (3 iterations, fp32, log-space; see `dinoflow.losses.sinkhorn`).

The centre update follows the official timing: `update_center` (= `reduce_center_update`)
starts the cross-rank sum of the batch (asynchronously under torch.distributed) and the EMA
step is applied lazily by `apply_center_update`, which `softmax_center_teacher` calls first.
So `.center` changes only when the next targets are computed (or on `apply_center_update()` /
`state_dict()`), exactly as in DINOv2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinoflow.distributed.collectives import AsyncMean, ema_update
from dinoflow.losses.sinkhorn import sinkhorn_knopp
from dinoflow.losses.soft_ce import soft_cross_entropy


class DINOLoss(nn.Module):
    """Cross-entropy between teacher targets and student softmax on the prototype logits.

    Args:
        out_dim: number of prototypes K.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the softmax-centering centre.
    Buffers:
        center: [1, K] fp32 (same name and shape as the official `dino_loss.center`).
    """

    center: torch.Tensor  # a registered buffer: saved with the state, moved with the module

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        # pending centre update: [1, K + 1] = (sum of teacher rows, row count), reduced over ranks
        self._batch_mean = AsyncMean()

    # ------------------------------------------------------------------ teacher targets

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """softmax((teacher_output - center) / teacher_temp) over prototypes.

        Args:
            teacher_output: [B, K] teacher head outputs (all global crops stacked).
        Returns:
            [B, K] targets (fp32 when the input is lower precision, as the centre is fp32).
        """
        self.apply_center_update()
        center = self.center.to(teacher_output.device)
        return F.softmax((teacher_output - center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets over the global batch (all ranks' rows count).

        Args:
            teacher_output: [B_local, K] teacher head outputs.
        Returns:
            [B_local, K] fp32 targets; each row sums to 1.
        """
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=n_iterations)

    @torch.no_grad()
    def teacher_targets(
        self, teacher_output: torch.Tensor, teacher_temp: float, centering: str, n_iterations: int = 3
    ) -> torch.Tensor:
        """The recipe's targets: softmax centering (queues this batch's centre update) or Sinkhorn-Knopp.

        Args:
            teacher_output: [B, K] teacher head outputs (all global crops stacked).
            centering: "softmax" or "sinkhorn_knopp".
        Returns:
            [B, K] fp32 targets; each row sums to 1.
        """
        if centering == "softmax":
            p = self.softmax_center_teacher(teacher_output, teacher_temp)
            self.update_center(teacher_output)
            return p
        if centering == "sinkhorn_knopp":
            return self.sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations=n_iterations)
        raise ValueError(f"centering must be 'softmax' or 'sinkhorn_knopp', got {centering!r}")

    # ------------------------------------------------------------------ loss

    def global_crops_loss(self, student_logits: torch.Tensor, teacher_targets: torch.Tensor) -> torch.Tensor:
        """Σ over the two (student global crop, other teacher crop) pairs of mean_b CE(t, s).

        CE(t, s)[b] = -Σ_k t[b, k] · log_softmax(s[b] / τ)_k, in fp32 whatever the logits' dtype.

        Args:
            student_logits: [2B, K] the student's global crops (crop 0's B rows, then crop 1's).
            teacher_targets: [2, B, K] teacher targets, already crop-swapped (row i of crop c is
                the target of the student's crop c row i).
        Returns:
            scalar fp32 (not divided by the number of crop pairs: the caller scales it).
        """
        b = _check_targets(student_logits, teacher_targets)
        return soft_cross_entropy(student_logits, teacher_targets.flatten(0, 1), self.student_temp, 1.0 / (2 * b)) * 2

    def local_crops_loss(self, student_logits: torch.Tensor, teacher_targets: torch.Tensor) -> torch.Tensor:
        """Σ over (student local crop, teacher global crop) pairs of mean_b CE(t, s): every local
        crop against both teacher crops of its image, as one cross-entropy against their sum
        (Σ_t t·log p = (Σ_t t)·log p).

        Args:
            student_logits: [n_local·B, K] the student's local crops (crop after crop, B rows each).
            teacher_targets: [2, B, K] teacher targets of the two global crops.
        Returns:
            scalar fp32 (not divided by the number of crop pairs).
        """
        b = _check_targets(student_logits, teacher_targets)
        index = torch.arange(student_logits.shape[0], device=teacher_targets.device) % b
        return soft_cross_entropy(
            student_logits, teacher_targets[0] + teacher_targets[1], self.student_temp, 1.0 / b, target_index=index
        )

    # ------------------------------------------------------------------ centre EMA

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Queue an EMA update of the centre with the mean teacher row of the global batch.

        Args:
            teacher_output: [B_local, K] teacher head outputs (before centering).
        """
        self.reduce_center_update(teacher_output)

    @torch.no_grad()
    def reduce_center_update(self, teacher_output: torch.Tensor) -> None:
        """Start summing the batch (and its row count) across ranks; `apply_center_update` finishes."""
        if teacher_output.ndim != 2 or teacher_output.shape[-1] != self.out_dim:
            raise ValueError(f"teacher_output must be [B, {self.out_dim}], got {tuple(teacher_output.shape)}")
        self.apply_center_update()  # never drop an update that was queued but not yet applied
        self._batch_mean.start(teacher_output)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """center ← m·center + (1 − m)·mean(teacher rows over all ranks), if an update is pending."""
        ema_update(self.center, self._batch_mean.take(), self.center_momentum)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # A checkpoint must not lose an update that is queued but not yet applied.
        self.apply_center_update()
        super()._save_to_state_dict(destination, prefix, keep_vars)


def _check_targets(student_logits: torch.Tensor, teacher_targets: torch.Tensor) -> int:
    """B of [2, B, K] targets, checked against student rows [c·B, K]."""
    if teacher_targets.ndim != 3 or teacher_targets.shape[0] != 2:
        raise ValueError(f"teacher targets must be [2, B, K] (two global crops), got {tuple(teacher_targets.shape)}")
    b, k = teacher_targets.shape[1:]
    if student_logits.ndim != 2 or student_logits.shape[1] != k or student_logits.shape[0] % max(1, b):
        raise ValueError(
            f"student logits must be [crops·{b}, {k}] to match teacher targets {tuple(teacher_targets.shape)}, "
            f"got {tuple(student_logits.shape)}"
        )
    return b
