"""Collective helpers for the losses (and the one `all_reduce_sum` the training loop uses too):
no-ops without a process group, all-reduces with one.

The losses need global batch statistics (the teacher centre, Sinkhorn-Knopp marginals, sample
counts). Each helper here returns the *global* value when `torch.distributed` is initialised
and the local value otherwise, so the loss code reads the same in both cases.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group exists (torchrun, or `init_process_group` in tests)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max of `t` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def global_count(n: int | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """The number of items summed over ranks, as a float64 scalar tensor (a copy: inputs stay intact)."""
    if isinstance(n, torch.Tensor):
        t = n.detach().reshape(-1)[:1].to(device=device, dtype=torch.float64, copy=True)
    else:  # a fill on the device, not a host-to-device copy (which on a GPU waits for the device)
        t = torch.full((1,), float(n), dtype=torch.float64, device=device)
    return all_reduce_sum(t).reshape(())


def global_logsumexp(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """log(sum(exp(x))) along `dim` (all entries when None), summing across ranks too.

    The rank-local slices of `dim` are concatenated logically: each rank holds some rows of the
    global matrix. Shift by the global max first so the exponentials never overflow.

    Args:
        x: float tensor, e.g. [B_local, K] logits.
        dim: the dimension spread over ranks (keepdim semantics), or None for a scalar.
    Returns:
        [1, K] for dim=0 on a 2-D input, a 0-d tensor for dim=None.
    """
    if dim is None:
        x = x.reshape(1, -1)
        return global_logsumexp(x, dim=1).reshape(())
    reduced_shape = list(x.shape)
    reduced_shape[dim] = 1
    if x.shape[dim] == 0:  # a rank without items (e.g. no masked patches) still joins the collectives
        m = torch.full(reduced_shape, -math.inf, dtype=x.dtype, device=x.device)
    else:
        m = torch.amax(x, dim=dim, keepdim=True)
    m = all_reduce_max(m)
    # A max of -inf means no finite entry anywhere; use 0 so that exp() below gives 0, not NaN.
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.sum(torch.exp(x - m_safe), dim=dim, keepdim=True)
    s = all_reduce_sum(s)
    return m_safe + torch.log(s)


class AsyncMean:
    """The global mean of rows summed across ranks, all-reduced asynchronously.

    `start(rows [n, K])` launches the sum of rows and their count; `take()` waits for it and
    returns (mean [1, K], has_rows: 0-d bool), both on the device, or None when nothing is
    pending. Whether any rank had a row stays a device tensor: reading it on the host would
    wait for the device every step. The teacher centres use it so the all-reduce overlaps the
    student's forward, as the official code does.
    """

    def __init__(self) -> None:
        self._pending: torch.Tensor | None = None
        self._handle: dist.Work | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def start(self, rows: torch.Tensor) -> None:
        rows = rows.float()
        self.start_sum(rows.sum(dim=0, keepdim=True), rows.shape[0])

    def start_sum(self, total: torch.Tensor, count: int | torch.Tensor) -> None:
        """Like `start` for rows already summed: total [1, K] over `count` rows (an int or a device tensor)."""
        total = total.float().reshape(1, -1)
        if isinstance(count, torch.Tensor):
            n = count.detach().reshape(1, 1).to(device=total.device, dtype=total.dtype)
        else:  # a fill on the device, not a host-to-device copy (which on a GPU waits for the device)
            n = torch.full((1, 1), float(count), dtype=total.dtype, device=total.device)
        self._pending = torch.cat([total, n], dim=1)
        self._handle = dist.all_reduce(self._pending, async_op=True) if is_distributed() else None

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._pending is None:
            return None
        if self._handle is not None:
            self._handle.wait()
            self._handle = None
        pending, self._pending = self._pending, None
        count = pending[:, -1:]
        return pending[:, :-1] / count.clamp(min=1), count.reshape(()) > 0


def ema_update(value: torch.Tensor, mean: tuple[torch.Tensor, torch.Tensor] | None, momentum: float) -> None:
    """value ← m·value + (1 − m)·mean in place, where `mean` is `AsyncMean.take()`'s (mean, has_rows);
    unchanged when nothing was pending or no rank had a row (decided on the device)."""
    if mean is None:
        return
    batch, has_rows = mean
    batch = batch.reshape(value.shape).to(value.device)
    value.copy_(torch.where(has_rows.to(value.device), value * momentum + batch * (1 - momentum), value))
