"""Sinkhorn-Knopp teacher normalisation (SwAV / DINOv2) in log-space, keeping only its scaling vectors.

Every Sinkhorn step rescales rows or columns, so after any number of steps the assignment is
Q = exp(L + r[:, None] + c[None, :]) with L = logits / T and two vectors: r [B] (samples) and
c [K] (prototypes). Each step recomputes one vector from the other with a log-sum-exp:

    c ← −log Σ_b exp(L + r)  − log K     (each prototype gets mass 1/K over the global batch)
    r ← −log Σ_k exp(L + c)  − log B     (each sample gets mass 1/B; rows are local)

so the matrix itself is never rewritten: one fp32 copy of L (or none, when the caller produces
L chunk by chunk), walked in cache-sized row chunks, and the result is written in place at the
end. The official implementation exponentiates `logits / temp` directly and overflows once that
ratio exceeds ~88 in fp32; log-sum-exp with the max shifted out stays finite for finite logits.

Marginals of the returned Q [B, K] (B samples over all ranks), for n_iterations >= 1: every row
sums to exactly 1 (the last step normalises samples) and each column sums to approximately B / K
over the global batch (exact only in the limit of many iterations).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from dinoflow.distributed.collectives import all_reduce_max, all_reduce_sum, global_count
from dinoflow.losses.sinkhorn_device import sinkhorn_knopp_fused
from dinoflow.losses.soft_ce import chunk_rows

RowsFn = Callable[[int, int], Tensor]  # (start, end) → fp32 rows of L = logits / T


def _col_logsumexp(rows: RowsFn, n: int, k: int, row_shift: Tensor, step: int, device: torch.device) -> Tensor:
    """log Σ_b exp(L[b] + row_shift[b]) per column, over the rows of every rank → [K]."""
    m = torch.full((k,), -math.inf, device=device)
    s = torch.zeros(k, device=device)
    for a in range(0, n, step):  # streaming log-sum-exp: rescale the running sum to each new max
        b = min(n, a + step)
        x = rows(a, b) + row_shift[a:b, None]
        new_m = torch.maximum(m, x.amax(dim=0))
        safe = torch.where(torch.isfinite(new_m), new_m, torch.zeros_like(new_m))
        s = s * torch.exp(m - safe) + x.sub_(safe).exp_().sum(dim=0)
        m = new_m
    g = all_reduce_max(m.clone())
    safe = torch.where(torch.isfinite(g), g, torch.zeros_like(g))  # -inf: no entry anywhere → exp() gives 0
    s = all_reduce_sum(s * torch.exp(m - safe))
    return safe + torch.log(s)


def _row_logsumexp(rows: RowsFn, n: int, col_shift: Tensor, step: int, device: torch.device) -> Tensor:
    """log Σ_k exp(L[b] + col_shift) per (local) row → [B]."""
    out = torch.empty(n, device=device)
    for a in range(0, n, step):
        b = min(n, a + step)
        out[a:b] = torch.logsumexp(rows(a, b) + col_shift, dim=1)
    return out


@torch.no_grad()
def sinkhorn_scalings(
    rows: RowsFn,
    n_rows: int,
    n_protos: int,
    device: torch.device,
    n_iterations: int = 3,
    n_samples: int | Tensor | None = None,
    chunk_elems: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The scaling vectors of Sinkhorn-Knopp: Q = exp(L + r[:, None] + c[None, :]).

    Args:
        rows: (a, b) → fp32 rows a..b of L = logits / T (this rank's rows; called once per pass).
        n_rows, n_protos: B_local and K.
        n_samples: this rank's sample count (summed over ranks); defaults to n_rows.
    Returns:
        r [B_local], c [K] (fp32); rows of Q sum to 1 for n_iterations >= 1.
    """
    step = chunk_rows(n_protos, device, chunk_elems)
    log_b = torch.log(global_count(n_rows if n_samples is None else n_samples, device=device)).float()
    log_k = math.log(n_protos)
    r = torch.zeros(n_rows, device=device)
    c = torch.zeros(n_protos, device=device)
    if n_iterations == 0:  # Q normalised to total mass 1 (a constant shift of r cancels in any later step)
        total = _col_logsumexp(rows, n_rows, n_protos, r, step, device)
        r = r - torch.logsumexp(total, dim=0)
    for _ in range(n_iterations):
        c = -_col_logsumexp(rows, n_rows, n_protos, r, step, device) - log_k
        r = -_row_logsumexp(rows, n_rows, c, step, device) - log_b
    return r + log_b, c


# A column or row sum of the linear-domain path below this has lost terms to fp32 underflow
# (each lost term is < 1.2e-38), so its relative error could exceed ~1e-7: use the log-space path.
_LINEAR_MIN_SUM = 1e-30


@torch.no_grad()
def _linear_scaled(q: Tensor, n_iterations: int, n_samples: int | Tensor | None) -> bool:
    """Sinkhorn on q = L [B, K] fp32 through E = exp(L − rowmax), overwritten with the result.

    Every step is a matrix-vector product with E instead of a log-sum-exp over [B, K] (one exp
    pass instead of 2·n_iterations + 1; ~4× faster on a CPU). Row and column scalings stay in
    log space, shifted by their max, so nothing overflows; returns False (q is then garbage) when
    a sum came close to fp32 underflow, for the caller to redo the step in log space.
    """
    m = q.amax(dim=1)
    e = q.sub_(m.unsqueeze(1)).exp_()  # [B, K] in (0, 1]; every row holds a 1
    log_b = torch.log(global_count(q.shape[0] if n_samples is None else n_samples, device=q.device)).float()
    log_k = math.log(q.shape[1])
    r = torch.zeros_like(m)
    smallest = torch.full((1,), math.inf, device=q.device)
    col_w = row = None
    for _ in range(n_iterations):  # a rank with no rows (no masked patch) joins every collective too
        s = m + r  # log of each row's factor
        s_max = all_reduce_max(torch.cat([s, torch.full((1,), -math.inf, device=q.device)]).amax().reshape(1))
        col = all_reduce_sum(torch.mv(e.t(), torch.exp(s - s_max)))  # [K]: Σ_b exp(L + r), / exp(s_max)
        c = -(torch.log(col) + s_max) - log_k
        c_max = c.max()
        col_w = torch.exp(c - c_max)  # [K] in (0, 1]
        row = torch.mv(e, col_w)  # [B]: Σ_k exp(L + c), / exp(m + c_max)
        r = -(m + torch.log(row) + c_max) - log_b
        smallest = torch.cat([smallest, col, row]).amin().reshape(1)
    ok = all_reduce_max((~(smallest >= _LINEAR_MIN_SUM)).float().reshape(1)).item() == 0  # NaN: not ok
    if ok and col_w is not None and row is not None:  # None only without an iteration: nothing to scale
        e.mul_(col_w).div_(row.unsqueeze(1))  # rows sum to 1 (the last step normalises samples)
    return ok


@torch.no_grad()
def sinkhorn_knopp(
    logits: Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: int | Tensor | None = None,
    chunk_elems: int | None = None,
) -> Tensor:
    """Balanced soft assignment of samples to prototypes.

    On a CPU the steps run as matrix-vector products on exp(L − rowmax) (`_linear_scaled`), in
    log space when a sum nears underflow (a check that reads a value back); on an accelerator as
    compiled log-space passes over the logits as they are (`sinkhorn_device`), which read nothing
    back. All give the log-space result within fp32 rounding.

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
    if logits.device.type != "cpu":
        return sinkhorn_knopp_fused(logits, teacher_temp, n_iterations, n_samples)
    q = logits.float() / teacher_temp  # the one [B, K] fp32 copy; the result is written into it
    if q.device.type == "cpu" and n_iterations > 0:
        if _linear_scaled(q, n_iterations, n_samples):
            return q
        q = logits.float() / teacher_temp
    r, c = sinkhorn_scalings(
        lambda a, b: q[a:b], q.shape[0], q.shape[1], q.device, n_iterations, n_samples, chunk_elems
    )
    return q.add_(r.unsqueeze(1)).add_(c.unsqueeze(0)).exp_()
