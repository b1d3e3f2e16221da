"""Soft-target cross-entropy on prototype logits.

    loss = -Σ_n w_n · Σ_k T[j(n), k] · log_softmax(s_n / τ)_k

is the one formula behind the DINO (CLS) and iBOT (patch) terms, written as plain PyTorch.

Logits are upcast to fp32 BEFORE the temperature divides them: dividing bf16 logits by 0.1 in
bf16 rounds every logit to 8 significant bits first.

Two entry points:
- `soft_cross_entropy(logits, targets, ...)`: logits [N, K] the caller already has;
- `prototype_cross_entropy(z, weight, targets_fn, ...)`: logits = z @ weightᵀ are never held
  whole: each chunk of rows is computed under activation checkpointing, so the backward keeps
  only the chunk's inputs and recomputes its logits (heads-mode distillation on every patch
  token, where [2B·N, K] would not fit).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

TargetsFn = Callable[[int, int], Tensor]  # (row start, row end) → fp32 targets [end - start, K]


def chunk_rows(n_cols: int, device: torch.device, chunk_elems: int | None = None) -> int:
    """Rows per chunk so that one fp32 [rows, n_cols] temporary holds about `chunk_elems` values:
    ~8 M (32 MB) on a CPU, ~64 M (256 MB) on a GPU: few chunks, because every op is a parallel
    region (a kernel launch on a GPU) whose fixed cost, on a shared CPU, outweighs cache reuse."""
    if chunk_elems is None:
        chunk_elems = 1 << 23 if device.type == "cpu" else 1 << 26
    return max(1, chunk_elems // max(1, n_cols))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least fp32 (fp64 inputs stay fp64, e.g. for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _row_weights(weights: Tensor | float, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(weights, Tensor):
        if weights.shape != (n,):
            raise ValueError(f"weights must be [{n}] (one per student row), got {tuple(weights.shape)}")
        return weights.detach().to(dtype)
    return torch.full((n,), float(weights), device=device, dtype=dtype)


def soft_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    student_temp: float,
    weights: Tensor | float = 1.0,
    target_index: Tensor | None = None,
) -> Tensor:
    """-Σ_n w_n Σ_k T[j(n), k] log_softmax(logits_n / τ)_k as an fp32 scalar.

    Args:
        logits: [N, K] student logits, any float dtype (upcast before the temperature).
        targets: [R, K] teacher targets (no gradient flows into them).
        student_temp: τ.
        weights: [N] per-row weights, or one float for every row.
        target_index: long [N], the target row j(n) of each student row; None: j(n) = n (R = N).
    Returns:
        scalar fp32 loss (fp64 for fp64 logits), differentiable in `logits`.
    """
    if logits.ndim != 2 or targets.ndim != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(
            f"logits [N, K] and targets [R, K] must share K, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if target_index is None and targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} student rows but {targets.shape[0]} target rows: pass target_index")
    acc = _acc_dtype(logits.dtype)
    w = _row_weights(weights, logits.shape[0], logits.device, acc)
    t = targets.detach() if target_index is None else targets.detach().index_select(0, target_index)
    log_p = torch.log_softmax(logits.to(acc) / student_temp, dim=-1)
    return -(w * (t.to(acc) * log_p).sum(dim=-1)).sum()


def _chunk_loss(z: Tensor, weight: Tensor, w: Tensor, temp: float, targets_fn: TargetsFn, a: int, b: int) -> Tensor:
    return soft_cross_entropy(z @ weight.t(), targets_fn(a, b), temp, w)


def prototype_cross_entropy(
    z: Tensor,
    weight: Tensor,
    targets_fn: TargetsFn,
    student_temp: float,
    weights: Tensor | float = 1.0,
    chunk_elems: int | None = None,
) -> Tensor:
    """`soft_cross_entropy(z @ weightᵀ, targets)` without ever holding more than one chunk of logits.

    Args:
        z: [N, d] normalised bottleneck features (the head's input to its prototype layer).
        weight: [K, d] prototype matrix (differentiable; e.g. the weight-normalised last layer).
        targets_fn: (a, b) → fp32 targets [b − a, K] for student rows a..b (called again in the
            backward, so it must be deterministic).
        student_temp, weights: as in `soft_cross_entropy`.
        chunk_elems: logits per chunk (see `chunk_rows`).
    Returns:
        scalar fp32 loss, differentiable in `z` and `weight`.
    """
    if z.ndim != 2 or weight.ndim != 2 or z.shape[1] != weight.shape[1]:
        raise ValueError(f"z [N, d] and weight [K, d] must share d, got {tuple(z.shape)} and {tuple(weight.shape)}")
    n = z.shape[0]
    w = _row_weights(weights, n, z.device, _acc_dtype(z.dtype))
    rows = chunk_rows(weight.shape[0], z.device, chunk_elems)
    total = torch.zeros((), dtype=w.dtype, device=z.device)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        total = total + checkpoint(
            _chunk_loss, z[a:b], weight, w[a:b], student_temp, targets_fn, a, b, use_reentrant=False
        )
    return total
