"""Activation checkpointing of transformer blocks: "full" or "selective".

- "full" keeps only each block's input and recomputes the whole block in the backward
  (about one extra forward of the backbone).
- "selective" keeps the outputs of the matrix products and of attention (the expensive ops)
  and recomputes the cheap element-wise ones (norms, GELU, LayerScale, residual adds), whose
  outputs are what a block otherwise keeps most of: the GELU output alone is 4·D per token.

`benchmarks/train_throughput.py --activation-memory` measures the bytes each mode keeps for the
backward on a given configuration.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

MODES = ("none", "selective", "full")

_aten = torch.ops.aten
_SAVE = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.convolution.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_block(
    fn: Callable, x: torch.Tensor, segments, mode: str, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """fn(x, segments, rows) under the checkpointing `mode` ("selective" or "full")."""
    if mode == "full":
        return checkpoint(fn, x, segments, rows, use_reentrant=False)
    if mode == "selective":
        return checkpoint(
            fn,
            x,
            segments,
            rows,
            use_reentrant=False,
            context_fn=partial(create_selective_checkpoint_contexts, _policy),
        )
    raise ValueError(f"activation checkpointing mode {mode!r} is not one of {MODES}")
