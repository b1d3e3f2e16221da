"""DINO loss on CLS tokens: cross-entropy between teacher targets and student predictions.

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

from typing import Iterable, Sequence

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

    # ------------------------------------------------------------------ loss

    def forward(
        self,
        student_output_list: Sequence[torch.Tensor] | torch.Tensor,
        teacher_out_softmaxed_centered_list: Iterable[torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """-sum over (student crop s, teacher crop t) of mean_b sum_k t[b,k] log_softmax(s/τ)[b,k].

        Computed as one fused cross-entropy per student crop against the sum of the teacher crops
        (Σ_t t·log p = (Σ_t t)·log p), in fp32 whatever the logits' dtype.

        Args:
            student_output_list: crops of student logits, each [B, K] (a tensor [n, B, K] works too).
            teacher_out_softmaxed_centered_list: teacher targets, each [B, K].
        Returns:
            scalar fp32 loss (not divided by the number of crop pairs: the caller scales it).
        """
        teachers = list(teacher_out_softmaxed_centered_list)
        students = list(student_output_list)
        if not teachers or not students:
            raise ValueError("DINOLoss needs at least one student and one teacher crop")
        for t in teachers:
            for s in students:
                if t.shape != s.shape:
                    raise ValueError(
                        f"student crop {tuple(s.shape)} and teacher crop {tuple(t.shape)} must have the same shape"
                    )
        target = teachers[0] if len(teachers) == 1 else torch.stack(teachers).sum(0)
        total = None
        for s in students:
            term = soft_cross_entropy(s, target, self.student_temp, weights=1.0 / s.shape[0])
            total = term if total is None else total + term
        return total

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
