"""Architecture presets and the official torch.hub model definitions.

The four official sizes reproduce DINOv2's `vit_small` … `vit_giant2`; the small presets
(`vit_pico`, `vit_mini`, `vit_tiny`) exist so the whole pipeline trains on a laptop CPU.
"""

from __future__ import annotations

from typing import Any

from dinoflow.config.archs import ARCH_SPECS, ArchSpec
from dinoflow.errors import DinoflowError

__all__ = ["ARCH_SPECS", "HUB_NAMES", "ArchSpec", "arch_from_shape", "arch_spec", "hub_kwargs"]


def arch_spec(arch: str) -> ArchSpec:
    """The preset for `arch`, or a DinoflowError listing the known ones."""
    try:
        return ARCH_SPECS[arch]
    except KeyError:
        raise DinoflowError(f"unknown architecture {arch!r}; choose one of {sorted(ARCH_SPECS)}") from None


def arch_from_shape(embed_dim: int, depth: int) -> str:
    """Find the preset with this width and depth (used to recognise a bare state dict)."""
    for name, spec in ARCH_SPECS.items():
        if spec.embed_dim == embed_dim and spec.depth == depth:
            return name
    known = ", ".join(f"{n} ({s.embed_dim}x{s.depth})" for n, s in ARCH_SPECS.items())
    raise DinoflowError(
        f"no preset has embed_dim {embed_dim} and depth {depth}; known presets (dim x depth): {known}. "
        "Put a config.yaml (a ModelConfig) beside the weights to describe the architecture."
    )


# Official torch.hub entry points (dinov2/hub/backbones.py): all use img_size 518 (37x37 grid),
# patch 14, LayerScale (init 1.0; the trained values are loaded anyway) and no block chunks.
# The `_reg` variants add 4 registers and interpolate positional embeddings to a size with
# antialiasing instead of the historical scale factor with a 0.1 offset.
_HUB_ARCH = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant2"}
HUB_NAMES = tuple(f"dinov2_vit{k}14{suffix}" for k in _HUB_ARCH for suffix in ("", "_reg"))


def hub_kwargs(name: str) -> dict[str, Any]:
    """`build_backbone` keyword arguments reproducing the official hub model `name`.

    Example: `build_backbone(**hub_kwargs("dinov2_vits14_reg"))` is the architecture of
    `dinov2_vits14_reg4_pretrain.pth`.
    """
    if name not in HUB_NAMES:
        raise DinoflowError(f"unknown hub model {name!r}; choose one of {list(HUB_NAMES)}")
    registers = name.endswith("_reg")
    return {
        "arch": _HUB_ARCH[name[len("dinov2_vit")]],
        "patch_size": 14,
        "img_size": 518,
        "layerscale_init": 1.0,
        "block_chunks": 0,
        "ffn_layer": None,
        "num_register_tokens": 4 if registers else 0,
        "interpolate_antialias": registers,
        "interpolate_offset": 0.0 if registers else 0.1,
    }
