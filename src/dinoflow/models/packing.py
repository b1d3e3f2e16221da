"""Packed crops: the tokens of every crop size in one [T, D] tensor, one pass per block.

Global and local crops have different token counts, so they cannot share a [B, N, D] batch.
Packed, the row-wise layers (norms, linear layers, MLP, LayerScale, residuals) run once over
all T tokens — fewer, larger kernels — and attention runs per crop size (`segments`). This
module holds the bookkeeping: packing and unpacking, and stochastic depth on packed tokens
drawn in the same order as the unpacked block draws it (so both give the same numbers).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Segments = tuple[tuple[int, int], ...]  # packed tokens: (images, tokens per image) of each crop size, in order
Branch = Callable[[Tensor, Segments], Tensor]


def pack(xs: Sequence[Tensor]) -> tuple[Tensor, Segments]:
    """[B_i, N_i, D] tensors → packed [Σ B_i·N_i, D] and their segments ((B_i, N_i), ...)."""
    segments = tuple((int(x.shape[0]), int(x.shape[1])) for x in xs)
    return torch.cat([x.flatten(0, 1) for x in xs]), segments


def unpack(x: Tensor, segments: Segments) -> list[Tensor]:
    """Packed [T, D] → one [B_i, N_i, D] view per segment."""
    return [part.view(b, n, -1) for part, (b, n) in zip(x.split([b * n for b, n in segments]), segments)]


def _subset_residual(x: Tensor, segments: Segments, picks: list[Tensor], branch: Branch) -> Tensor:
    """x + (B/keep)·branch(x of the picked images) on the picked images' rows, per segment."""
    rows, sub, scales = [], [], []
    offset = 0
    for (b, n), idx in zip(segments, picks):
        keep = idx.shape[0]
        rows.append((offset + idx[:, None] * n + torch.arange(n, device=x.device)).flatten())
        sub.append((keep, n))
        scales.append(torch.full((keep * n, 1), b / keep, dtype=x.dtype, device=x.device))
        offset += b * n
    rows_t = torch.cat(rows)
    residual = branch(x.index_select(0, rows_t), tuple(sub))
    return x.index_add(0, rows_t, residual.to(x.dtype) * torch.cat(scales))


def packed_drop_path_block(
    x: Tensor, segments: Segments, attn_branch: Branch, ffn_branch: Branch, rate: float
) -> Tensor:
    """A block's two residuals with stochastic depth on packed tokens [T, D].

    The unpacked block draws, per crop size in order, the attention draw then the FFN draw
    (randperm subsets for rate > 0.1, the official fast path; Bernoulli masks otherwise);
    everything is drawn up front in that same order.
    """
    if rate > 0.1:
        picks_attn, picks_ffn = [], []
        for b, _ in segments:
            keep = max(int(b * (1 - rate)), 1)
            picks_attn.append(torch.randperm(b, device=x.device)[:keep])
            picks_ffn.append(torch.randperm(b, device=x.device)[:keep])
        x = _subset_residual(x, segments, picks_attn, attn_branch)
        return _subset_residual(x, segments, picks_ffn, ffn_branch)
    keep_prob = 1.0 - rate
    m_attn, m_ffn = [], []
    for b, n in segments:
        m_attn.append(x.new_empty((b,)).bernoulli_(keep_prob).div_(keep_prob).repeat_interleave(n))
        m_ffn.append(x.new_empty((b,)).bernoulli_(keep_prob).div_(keep_prob).repeat_interleave(n))
    x = x + attn_branch(x, segments) * torch.cat(m_attn)[:, None]
    return x + ffn_branch(x, segments) * torch.cat(m_ffn)[:, None]
