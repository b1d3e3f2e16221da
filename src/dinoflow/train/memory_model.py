"""A memory model of the training step, and the activation checkpointing it chooses.

What the student's forward keeps for the backward, per token and per block, in elements
(D = embed dim, H = MLP hidden, h = attention heads), read off the block's saved tensors:
- "none": the block input and both norms' inputs and outputs (4D), qkv (3D), the attention
  output and the projection's output (2D), the MLP's hidden layer before and after GELU (2H)
  and its output (D), the attention's log-sum-exp (h) and the norms' statistics (4):
  10D + 2H + h + 4;
- "selective": the matrix products' and attention's outputs and the block input, the
  element-wise ops recomputed: 7D + H + h;
- "full": the block input: D.
Activations are bf16 under FSDP2's mixed-precision policy on CUDA (2 bytes) and fp32 on a CPU.
Around them the step holds its static memory: fp32 parameters, gradients and two AdamW
moments of the student, the fp32 EMA teacher (16 + 4 bytes a parameter), plus the K-wide
transients of the heads and losses (logits, Sinkhorn targets, a chunk of the cross-entropy).

`choose_checkpointing` takes the cheapest mode (recomputation: none < selective, which
redoes element-wise ops, < full, an extra forward of every block) whose predicted peak fits the
budget with a 10% margin for the caching allocator. tests/train/test_memory_model.py holds the
per-token model against the bytes a CPU forward really keeps; the GPU check records the
prediction next to the measured peaks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from dinoflow.models.layers import Mlp

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer
    from dinoflow.train.ssl_net import SSLNet

MODES_BY_COST = ("none", "selective", "full")
ALLOCATOR_MARGIN = 0.9


def kept_elements_per_token(mode: str, dim: int, hidden: int, heads: int) -> int:
    """Elements one block keeps for the backward per token under checkpointing `mode`."""
    if mode == "none":
        return 10 * dim + 2 * hidden + heads + 4
    if mode == "selective":
        return 7 * dim + hidden + heads
    if mode == "full":
        return dim
    raise ValueError(f"activation checkpointing mode {mode!r} is not one of {MODES_BY_COST}")


def block_dims(backbone: DinoVisionTransformer) -> tuple[int, int, int, int]:
    """(embed dim, MLP hidden, heads, blocks) of a dinoflow ViT."""
    blk = backbone.block_list()[0]
    mlp = blk.mlp
    hidden = mlp.fc1.out_features if isinstance(mlp, Mlp) else 2 * mlp.w3.in_features
    return backbone.embed_dim, hidden, blk.attn.num_heads, backbone.n_blocks


def activation_bytes(backbone: DinoVisionTransformer, tokens: int, mode: str, elem_bytes: int) -> int:
    """Bytes the student's forward keeps for the backward over `tokens` tokens (all crops)."""
    dim, hidden, heads, depth = block_dims(backbone)
    return depth * tokens * kept_elements_per_token(mode, dim, hidden, heads) * elem_bytes


def step_tokens(crops, patch_size: int, batch: int, extra_tokens: int = 1) -> int:
    """Tokens the student sees in a step: n_global global and n_local local crops per image."""
    g = (crops.global_size // patch_size) ** 2 + extra_tokens
    loc = (crops.local_size // patch_size) ** 2 + extra_tokens
    return batch * (crops.n_global * g + crops.n_local * loc)


def step_bytes(
    student: SSLNet, teacher: nn.Module, tokens: int, mode: str, elem_bytes: int, head_rows: int, prototypes: int
) -> dict[str, int]:
    """Predicted peak of one step, in parts: static, activations, K-wide transients, total."""
    n_student = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    static = 16 * n_student + 4 * n_teacher
    act = activation_bytes(student.backbone, tokens, mode, elem_bytes)
    # student logits (kept for the backward) and the teacher's, the fp32 targets, one fp32 chunk
    transient = head_rows * prototypes * (2 * elem_bytes + 4 + 4)
    return {"static": static, "activations": act, "transients": transient, "total": static + act + transient}


def choose_checkpointing(
    student: SSLNet,
    teacher: nn.Module,
    tokens: int,
    elem_bytes: int,
    head_rows: int,
    prototypes: int,
    budget_bytes: int,
) -> tuple[str | None, dict[str, int]]:
    """(the cheapest mode whose predicted peak fits `budget_bytes` with the allocator's margin, or
    None when none does; the predicted peak of every mode)."""
    totals = {
        m: step_bytes(student, teacher, tokens, m, elem_bytes, head_rows, prototypes)["total"] for m in MODES_BY_COST
    }
    fits = [m for m in MODES_BY_COST if totals[m] <= ALLOCATOR_MARGIN * budget_bytes]
    return (fits[0] if fits else None), totals
