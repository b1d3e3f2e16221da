"""Linear → GELU → Linear that keeps only the first product's output for the backward.

Autograd keeps both the hidden pre-activation h = fc1(x) (for GELU's derivative) and a = GELU(h)
(for fc2's weight gradient): two [tokens, 4·D] tensors, 8 of the ~17 floats per token per
embedding dimension that a ViT block holds for its backward. This keeps h and recomputes a in
the backward (one element-wise pass, ~1.5 ms per ViT-S block of 2,128 tokens on two cores),
which frees 4·D floats per token per block: what the student forward keeps on the ViT-S/14
benchmark configuration goes from 742 to 604 MiB (`benchmarks/train_throughput.py ... --activation-memory`).

The gradients are those of the plain layers (the same products on the same values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _GeluMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
        h = F.linear(x, w1, b1)
        ctx.save_for_backward(x, h, w1, w2)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return F.linear(F.gelu(h), w2, b2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, h, w1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        h2 = h.reshape(-1, h.shape[-1])
        grad_w2 = grad_b2 = None
        if need[3]:
            a = F.gelu(h2)
            grad_w2 = g2.t() @ a
            grad_a = torch.mm(g2, w2, out=a)  # a is spent: its buffer takes ∂L/∂a
        else:
            grad_a = g2 @ w2
        if need[4] and ctx.has_bias[1]:
            grad_b2 = g2.sum(0)
        grad_h = torch.ops.aten.gelu_backward(grad_a, h2)
        x2 = x.reshape(-1, x.shape[-1])
        grad_w1 = grad_h.t() @ x2 if need[1] else None
        grad_b1 = grad_h.sum(0) if need[2] and ctx.has_bias[0] else None
        grad_x = (grad_h @ w1).view(x.shape) if need[0] else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def gelu_mlp(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
    """fc2(GELU(fc1(x))) for x [..., D] → [..., D_out] (exact GELU), differentiable in every input."""
    return _GeluMlp.apply(x, w1, b1, w2, b2)
