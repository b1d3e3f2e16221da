"""Sinkhorn-Knopp teacher normalisation (SwAV / DINOv2), computed in log-space.

The official implementation exponentiates `logits / temp` directly and overflows to inf (then
NaN) once that ratio exceeds ~88 in fp32. Every step of the algorithm is a rescaling, so it can be
carried out on log-probabilities with log-sum-exp normalisers instead: the result is the same
matrix wherever the official one is finite, and stays finite for any finite logits.

Marginals of the returned Q [B, K] (B samples over all ranks, K prototypes), for n_iterations >= 1:
every row (sample) sums to exactly 1 — the last step is a per-sample normalisation — and each
column (prototype) sums to approximately B / K over the global batch (exact only in the limit of
many iterations).
"""

from __future__ import annotations

import math

import torch

from dinoflow.losses.distributed import global_count, global_logsumexp


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Balanced soft assignment of samples to prototypes.

    Args:
        logits: [B_local, K] teacher head outputs (any float dtype; computed in fp32).
        teacher_temp: sharpening temperature.
        n_iterations: alternating normalisation rounds (3 in DINOv2).
        n_samples: this rank's number of samples (summed over ranks here); defaults to B_local.
    Returns:
        [B_local, K] fp32 assignment whose rows sum to 1.
    """
    if logits.ndim != 2:
        raise ValueError(f"sinkhorn_knopp expects [samples, prototypes] logits, got shape {tuple(logits.shape)}")
    if n_iterations < 0:
        raise ValueError(f"n_iterations must be >= 0, got {n_iterations}")
    log_q = logits.float() / teacher_temp
    n_protos = log_q.shape[1]
    local_n = log_q.shape[0] if n_samples is None else n_samples
    log_b = torch.log(global_count(local_n, device=log_q.device)).to(log_q.dtype)
    log_k = math.log(n_protos)

    # Normalise the whole matrix to sum 1 (cancels below for n_iterations >= 1; kept so that
    # n_iterations = 0 returns the same scaling as the reference).
    log_q = log_q - global_logsumexp(log_q, dim=None)
    for _ in range(n_iterations):
        # each prototype gets total mass 1/K over the global batch
        log_q = log_q - global_logsumexp(log_q, dim=0) - log_k
        # each sample gets total mass 1/B (samples are local: no communication)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b
    # rescale so that each sample's row is a distribution over prototypes
    return torch.exp(log_q + log_b)
