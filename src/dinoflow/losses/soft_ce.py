"""Soft-target cross-entropy on prototype logits, fused and chunked over rows.

    loss = -Σ_n w_n · Σ_k T[j(n), k] · log_softmax(s_n / τ)_k

is the one formula behind the DINO (CLS) and iBOT (patch) terms. Written out in eager PyTorch
it allocates several fp32 [rows × K] tensors (the upcast, the division, log_softmax, the product)
and autograd keeps most of them for the backward. Here the forward keeps only each row's
log-sum-exp, the backward recomputes softmax from the logits the caller already holds, and both
walk the rows in chunks small enough to stay in cache on a CPU (and bounded on a GPU).

Logits are upcast to fp32 BEFORE the temperature divides them: dividing bf16 logits by 0.1 in
bf16 rounds every logit to 8 significant bits first.

Two entry points share the chunk arithmetic:
- `soft_cross_entropy(logits, targets, ...)`: logits [N, K] the caller already has;
- `prototype_cross_entropy(z, weight, targets_fn, ...)`: logits = z @ weightᵀ are never stored:
  each chunk is recomputed in the backward (heads-mode distillation on every patch token, where
  [2B·N, K] would not fit).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

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


def _targets_from(targets: Tensor, index: Tensor | None, dtype: torch.dtype) -> TargetsFn:
    def rows(a: int, b: int) -> Tensor:
        t = targets[a:b] if index is None else targets.index_select(0, index[a:b])
        return t.to(dtype)

    return rows


def _scaled(logits: Tensor, temp: float, dtype: torch.dtype) -> Tensor:
    """logits upcast to `dtype` THEN divided by τ, as a fresh tensor the caller may overwrite."""
    return logits.to(dtype).div_(temp) if logits.dtype != dtype else logits / temp


def _chunk_forward(x: Tensor, t: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """x = logits/τ fp32 [c, K] (overwritten), t [c, K], w [c] → (Σ_n w_n·ce_n, lse [c])."""
    lse = torch.logsumexp(x, dim=1)
    tx = torch.einsum("nk,nk->n", t, x)  # a batched dot: no [c, K] product tensor
    ce = tx - lse * t.sum(dim=1)
    return -(w * ce).sum(), lse


def _chunk_grad_logits(x: Tensor, t: Tensor, lse: Tensor, scale: Tensor) -> Tensor:
    """d loss / d logits for one chunk, in place on x (= logits/τ fp32): scale·(softmax·Σt − t).
    `scale` [c, 1] = w·grad_out/τ."""
    p = x.sub_(lse.unsqueeze(1)).exp_()
    return p.mul_(t.sum(dim=1, keepdim=True)).sub_(t).mul_(scale)


def _chunk_forward_pure(logits: Tensor, t: Tensor, w: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """`_chunk_forward` on raw logits [c, K] (any dtype) without in-place ops: one fused kernel
    per chunk once compiled (upcast, temperature, log-sum-exp and the target dot in one read)."""
    x = logits.to(w.dtype) / temp
    lse = torch.logsumexp(x, dim=1)
    ce = (t * x).sum(dim=1) - lse * t.sum(dim=1)
    return -(w * ce).sum(), lse


def _chunk_grad_pure(logits: Tensor, t: Tensor, lse: Tensor, scale: Tensor, temp: float) -> Tensor:
    """`_chunk_grad_logits` on raw logits, without in-place ops (one fused kernel once compiled)."""
    p = torch.exp(logits.to(scale.dtype) / temp - lse.unsqueeze(1))
    return (p * t.sum(dim=1, keepdim=True) - t) * scale


def _eager_forward(logits: Tensor, t: Tensor, w: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    return _chunk_forward(_scaled(logits, temp, w.dtype), t, w)


def _eager_grad(logits: Tensor, t: Tensor, lse: Tensor, scale: Tensor, temp: float) -> Tensor:
    return _chunk_grad_logits(_scaled(logits, temp, scale.dtype), t, lse, scale)


_COMPILED: tuple[Callable, Callable] | None = None


def chunk_kernels(device: torch.device) -> tuple[Callable, Callable]:
    """(forward, gradient) of one chunk: in place and eager on a CPU (cache-sized chunks, no
    compilation), compiled on an accelerator, where each eager op would be a pass over the chunk
    (several fp32 [rows, K] temporaries) and a launch. Dynamic shapes: iBOT's row count changes
    every step."""
    global _COMPILED
    if device.type == "cpu":
        return _eager_forward, _eager_grad
    if _COMPILED is None:
        _COMPILED = (
            torch.compile(_chunk_forward_pure, dynamic=True, fullgraph=True),
            torch.compile(_chunk_grad_pure, dynamic=True, fullgraph=True),
        )
    return _COMPILED


class _SoftCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, w: Tensor, temp: float, targets_fn: TargetsFn, rows: int) -> Tensor:
        n, acc = logits.shape[0], w.dtype
        fwd, _ = chunk_kernels(logits.device)
        total = torch.zeros((), dtype=acc, device=logits.device)
        lse = torch.empty(n, dtype=acc, device=logits.device)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            part, lse[a:b] = fwd(logits[a:b], targets_fn(a, b), w[a:b], temp)
            total += part
        ctx.save_for_backward(logits, w, lse)
        ctx.temp, ctx.targets_fn, ctx.rows = temp, targets_fn, rows
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, w, lse = ctx.saved_tensors
        temp, rows, n = ctx.temp, ctx.rows, logits.shape[0]
        _, grad_fn = chunk_kernels(logits.device)
        scale_all = (w * grad / temp).unsqueeze(1)
        if n <= rows:  # one chunk: its result is the gradient
            g = grad_fn(logits, ctx.targets_fn(0, n), lse, scale_all, temp)
            return g.to(logits.dtype), None, None, None, None
        out = torch.empty_like(logits)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            out[a:b] = grad_fn(logits[a:b], ctx.targets_fn(a, b), lse[a:b], scale_all[a:b], temp)
        return out, None, None, None, None


def soft_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    student_temp: float,
    weights: Tensor | float = 1.0,
    target_index: Tensor | None = None,
    chunk_elems: int | None = None,
) -> Tensor:
    """-Σ_n w_n Σ_k T[j(n), k] log_softmax(logits_n / τ)_k as an fp32 scalar.

    Args:
        logits: [N, K] student logits, any float dtype (upcast before the temperature).
        targets: [R, K] teacher targets (no gradient flows into them).
        student_temp: τ.
        weights: [N] per-row weights, or one float for every row.
        target_index: long [N], the target row j(n) of each student row; None: j(n) = n (R = N).
        chunk_elems: temporaries per chunk (see `chunk_rows`).
    Returns:
        scalar fp32 loss, differentiable in `logits`.
    """
    if logits.ndim != 2 or targets.ndim != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(
            f"logits [N, K] and targets [R, K] must share K, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if target_index is None and targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} student rows but {targets.shape[0]} target rows: pass target_index")
    acc = _acc_dtype(logits.dtype)
    w = _row_weights(weights, logits.shape[0], logits.device, acc)
    rows = chunk_rows(logits.shape[1], logits.device, chunk_elems)
    return _SoftCE.apply(logits, w, float(student_temp), _targets_from(targets.detach(), target_index, acc), rows)


class _PrototypeCE(torch.autograd.Function):
    """Loss through the prototype layer without storing logits: z [N, d] @ weight [K, d]ᵀ per chunk."""

    @staticmethod
    def forward(
        ctx,
        z: Tensor,
        weight: Tensor,
        w: Tensor,
        temp: float,
        targets_fn: TargetsFn,
        rows: int,
        dtype: torch.dtype,
    ) -> Tensor:
        n, acc = z.shape[0], w.dtype
        fwd, _ = chunk_kernels(z.device)
        wt = weight.to(dtype)
        total = torch.zeros((), dtype=acc, device=z.device)
        lse = torch.empty(n, dtype=acc, device=z.device)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            part, lse[a:b] = fwd(z[a:b].to(dtype) @ wt.t(), targets_fn(a, b), w[a:b], temp)
            total += part
        ctx.save_for_backward(z, weight, w, lse)
        ctx.temp, ctx.targets_fn, ctx.rows, ctx.dtype = temp, targets_fn, rows, dtype
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, weight, w, lse = ctx.saved_tensors
        temp, rows, dtype = ctx.temp, ctx.rows, ctx.dtype
        _, grad_fn = chunk_kernels(z.device)
        wt = weight.to(dtype)
        grad_z = torch.empty_like(z)
        grad_w = torch.zeros(weight.shape, dtype=w.dtype, device=weight.device)
        scale_all = (w * grad / temp).unsqueeze(1)
        for a in range(0, z.shape[0], rows):
            b = min(z.shape[0], a + rows)
            zc = z[a:b].to(dtype)
            g = grad_fn(zc @ wt.t(), ctx.targets_fn(a, b), lse[a:b], scale_all[a:b], temp).to(dtype)
            grad_z[a:b] = (g @ wt).to(z.dtype)
            grad_w += (g.t() @ zc).to(w.dtype)
        return grad_z, grad_w.to(weight.dtype), None, None, None, None, None


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
        student_temp, weights, chunk_elems: as in `soft_cross_entropy`.
    Returns:
        scalar fp32 loss, differentiable in `z` and `weight`.
    """
    if z.ndim != 2 or weight.ndim != 2 or z.shape[1] != weight.shape[1]:
        raise ValueError(f"z [N, d] and weight [K, d] must share d, got {tuple(z.shape)} and {tuple(weight.shape)}")
    dtype = torch.get_autocast_dtype(z.device.type) if torch.is_autocast_enabled(z.device.type) else z.dtype
    w = _row_weights(weights, z.shape[0], z.device, _acc_dtype(z.dtype))
    rows = chunk_rows(weight.shape[0], z.device, chunk_elems)
    return _PrototypeCE.apply(z, weight, w, float(student_temp), targets_fn, rows, dtype)
