"""The ViT presets: one table, the source of every list of architecture names.

Torch-free on purpose: the config (`dinoflow.config`, which the CLI and the pipeline compiler
import without torch) derives its `arch` choices from `ARCHS`; the models build from the specs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Width, depth and heads of one ViT preset; `ffn` is the FFN used when `ffn_layer="auto"`."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"
    mlp_ratio: float = 4.0


ARCH_SPECS: dict[str, ArchSpec] = {
    "vit_pico": ArchSpec(64, 3, 2),
    "vit_mini": ArchSpec(128, 4, 4),
    "vit_tiny": ArchSpec(192, 12, 3),
    "vit_small": ArchSpec(384, 12, 6),
    "vit_base": ArchSpec(768, 12, 12),
    "vit_large": ArchSpec(1024, 24, 16),
    "vit_giant2": ArchSpec(1536, 40, 24, ffn="swiglu"),
}

ARCHS: tuple[str, ...] = tuple(ARCH_SPECS)  # the names, in the table's order (smallest first)
