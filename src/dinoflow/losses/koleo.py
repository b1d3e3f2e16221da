"""KoLeo regulariser (Kozachenko-Leonenko entropy estimator; Sablayrolles et al. 2018).

loss = -mean_i log(‖x̂_i − x̂_nn(i)‖ + eps) on L2-normalised rows x̂, nn(i) the nearest other row
(max inner product, the row itself excluded). It spreads features uniformly on the sphere.

Always fp32 with autocast disabled: in fp16 a duplicate row gives a distance that rounds to 0 and
log(0 + 1e-8) = log(0) = -inf. The loss is per rank by design (as in DINOv2): nearest neighbours
are searched within the local batch only, so its value depends on how the batch is split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The official module measures distances with nn.PairwiseDistance(2, eps=1e-8), which adds this
# eps to the difference vector; kept fixed (independent of forward's eps) for identical values.
_PAIRWISE_EPS = 1e-8


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropic loss on one batch of student features."""

    @staticmethod
    def pairwise_NNs_inner(x: torch.Tensor) -> torch.Tensor:  # official name
        """Index of each row's nearest other row, by inner product of L2-normalised rows.

        Args:
            x: [B, D] L2-normalised rows.
        Returns:
            [B] long indices.
        """
        dots = x @ x.t()
        # -1 is the smallest possible cosine: a row never picks itself unless all ties at -1
        dots.fill_diagonal_(-1.0)
        return torch.max(dots, dim=1).indices

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """
        Args:
            student_output: [B, D] features (e.g. one global crop's student CLS tokens), any float dtype.
            eps: L2-normalisation and log epsilon.
        Returns:
            scalar fp32 loss.
        """
        if student_output.ndim != 2:
            raise ValueError(f"KoLeoLoss expects [batch, dim] features, got shape {tuple(student_output.shape)}")
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            # at least fp32 (fp16/bf16 are upcast; float64 stays float64 for gradcheck)
            dtype = torch.promote_types(student_output.dtype, torch.float32)
            x = F.normalize(student_output.to(dtype), p=2, dim=-1, eps=eps)
            with torch.no_grad():
                nn_index = self.pairwise_NNs_inner(x.detach())
            distances = F.pairwise_distance(x, x[nn_index], p=2, eps=_PAIRWISE_EPS)
            return -torch.log(distances + eps).mean()
