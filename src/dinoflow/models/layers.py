"""Transformer building blocks with the official DINOv2 parameter names.

Attribute names (`qkv`, `proj`, `fc1`, `fc2`, `w12`, `w3`, `ls1.gamma`, …) are part of the
checkpoint format: renaming one breaks strict loading of hub weights.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinoflow.errors import DinoflowError
from dinoflow.models.checkpointing import checkpoint_block
from dinoflow.models.packing import Segments, packed_drop_path_block


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: [B, C, H, W] → [B, (H/p)·(W/p), D], row-major over the grid."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise DinoflowError(
                f"image size {h}x{w} is not divisible by the patch size {p}; resize or crop to a multiple of {p}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; one fused `qkv` projection laid out as [3, heads, head_dim]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise DinoflowError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _attend(self, qkv: Tensor, b: int, n: int) -> Tensor:
        """qkv [B·N, 3D] (or [B, N, 3D]) → attention output [B, N, D]; scale 1/sqrt(head_dim) (SDPA default, as official)."""
        d = qkv.shape[-1] // 3
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)

    def forward(self, x: Tensor, segments: Segments | None = None, rows: Tensor | None = None) -> Tensor:
        """x [B, N, D] → [B, N, D]; or packed tokens x [T, D] of several crop sizes → [T, D].

        Packed: the linear layers see all T tokens at once; attention runs per crop size
        (`segments`), so tokens of different images never attend to each other. With `rows`
        (packed only) every token still serves as key and value, but only the outputs of
        those rows are projected: [len(rows), D].
        """
        if segments is None:
            b, n, _ = x.shape
            return self.proj(self._attend(self.qkv(x), b, n))
        qkv = self.qkv(x)
        parts = qkv.split([b * n for b, n in segments])
        outs = [self._attend(part, b, n).flatten(0, 1) for part, (b, n) in zip(parts, segments)]
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return self.proj(out if rows is None else out.index_select(0, rows))


class Mlp(nn.Module):
    """Linear → GELU (exact) → Linear."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU: `w12` projects to [gate | value] halves; out = w3(silu(gate) * value)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel residual scale `gamma` (DINOv2 starts it at 1e-5 for training, 1.0 in hub builds)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero a whole sample's residual with probability `rate`, rescale survivors."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep) if keep > 0 else x * mask


class DropPath(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.rate, self.training)


def _residual_on_subset(x: Tensor, branch: Callable[[Tensor], Tensor], rate: float) -> Tensor:
    """Stochastic depth that skips the dropped samples' compute (official path for rates > 0.1).

    A random subset of floor(B·(1-rate)) samples (at least one) gets the branch, scaled by
    B / subset so the expectation matches the undropped residual.
    """
    b = x.shape[0]
    keep = max(int(b * (1 - rate)), 1)
    idx = torch.randperm(b, device=x.device)[:keep]
    residual = branch(x[idx])
    out = torch.index_add(x.flatten(1), 0, idx, residual.to(x.dtype).flatten(1), alpha=b / keep)
    return out.view_as(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    Takes one crop size [B, N, D], or the tokens of several crop sizes packed as [T, D] with
    their `segments` (see `Attention`). Stochastic depth draws its random numbers in the same
    order either way, so packed and unpacked passes give the same numbers.
    `checkpointing` ("none", "selective", "full") trades recomputation for activation memory
    (see `dinoflow.models.checkpointing`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        *,
        swiglu: bool = False,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        # None or 0 disables LayerScale entirely (no `gamma` parameter), as in the official code.
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = SwiGLUFFN(dim, ffn_hidden) if swiglu else Mlp(dim, ffn_hidden)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path_rate = float(drop_path_rate)
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.checkpointing = "none"

    def _attn_branch(self, x: Tensor, segments: Segments | None = None) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), segments))

    def _ffn_branch(self, x: Tensor, segments: Segments | None = None) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, segments: Segments | None = None, rows: Tensor | None = None) -> Tensor:
        """x [B, N, D] → [B, N, D], or packed x [T, D] with `segments` → [T, D]. Drop path acts in training mode only.

        With `rows` (packed, no stochastic depth): only those tokens' outputs, [len(rows), D];
        all tokens still serve as keys and values (the last block when few outputs are used).
        """
        if self.checkpointing != "none" and self.training and torch.is_grad_enabled():
            return checkpoint_block(self._forward, x, segments, self.checkpointing, rows)
        return self._forward(x, segments, rows)

    def _forward(self, x: Tensor, segments: Segments | None, rows: Tensor | None = None) -> Tensor:
        rate = self.drop_path_rate if self.training else 0.0
        if rows is not None:
            if segments is None or rate > 0.0:
                raise DinoflowError("a block computes selected rows on packed tokens without stochastic depth only")
            x = x.index_select(0, rows) + self.ls1(self.attn(self.norm1(x), segments, rows))
            return x + self._ffn_branch(x)
        if segments is not None and rate > 0.0:
            return packed_drop_path_block(x, segments, self._attn_branch, self._ffn_branch, rate)
        if rate > 0.1:
            x = _residual_on_subset(x, self._attn_branch, rate)
            return _residual_on_subset(x, self._ffn_branch, rate)
        if rate > 0.0:
            x = x + self.drop_path1(self._attn_branch(x))
            return x + self.drop_path2(self._ffn_branch(x))
        x = x + self._attn_branch(x, segments)
        return x + self._ffn_branch(x)
