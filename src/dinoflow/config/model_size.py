"""How big a network a few settings describe, known before anything is allocated.

A 46-byte params file can ask for a positional embedding of billions of patches or billions of
prototypes (terabytes): building it first would take the machine's memory or die deep in the
allocator. These counts come from the settings alone (no torch here: the config checks them at
load, the builders check them against the memory left before they allocate):
- `backbone_params`: the ViT's parameters (patch embedding, tokens, positional embedding, blocks,
  norms), exact for the presets built by `dinoflow.models`;
- `head_params`: a DINOHead's (MLP, prototypes with their weight-norm scale);
- `patch_tokens`: the positional embedding's grid, which also sets one image's activations.
`MAX_PATCH_TOKENS` and `MAX_PARAMS` are the stated bounds on what a config may describe: far
above any DINOv2 model (ViT-g/14 at 518 px: 1,369 patches, 1.1 billion parameters).
"""

from __future__ import annotations

from dinoflow.config.archs import ARCH_SPECS

MAX_PATCH_TOKENS = 1 << 16  # a 256×256 patch grid (3,584 px at patch 14)
MAX_PARAMS = 10_000_000_000  # 40 GB in fp32, one network
FLOAT_BYTES = 4  # parameters are fp32 (bf16 is autocast, not storage)
FORWARD_FLOATS = 4  # per token and width for one image's inference forward (input, norm, qkv's third, MLP)


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0) -> int:
    """Hidden width of the official fused SwiGLU: 2/3 of the MLP width, rounded up to a multiple of 8.

    For ViT-g (dim 1536): int(6144 * 2 / 3) = 4096 → 4096.
    """
    hidden = int(dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def patch_tokens(img_size: int, patch_size: int) -> int:
    return (img_size // patch_size) ** 2


def backbone_params(
    arch: str, patch_size: int, img_size: int, num_register_tokens: int = 0, ffn_layer: str | None = "auto",
    layerscale: bool = True,
) -> int:  # fmt: skip
    """Parameters of the preset ViT `arch` built with these settings."""
    spec = ARCH_SPECS[arch]
    d = spec.embed_dim
    ffn = spec.ffn if ffn_layer in (None, "auto") else ffn_layer
    if ffn == "swiglu":
        h = swiglu_hidden_dim(d, spec.mlp_ratio)
        ffn_params = d * 2 * h + 2 * h + h * d + d
    else:
        h = int(d * spec.mlp_ratio)
        ffn_params = d * h + h + h * d + d
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + ffn_params + (2 * d if layerscale else 0)
    tokens = (
        3 + patch_tokens(img_size, patch_size) + num_register_tokens
    ) * d  # cls, pos (cls + grid), mask, registers
    return 3 * patch_size**2 * d + d + tokens + spec.depth * block + 2 * d


def head_params(in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int) -> int:
    """Parameters of a DINOHead: its MLP (with biases) and the weight-normalised prototypes."""
    if nlayers <= 1:
        mlp = in_dim * bottleneck_dim + bottleneck_dim
    else:
        mlp = in_dim * hidden_dim + hidden_dim + (nlayers - 2) * (hidden_dim * hidden_dim + hidden_dim)
        mlp += hidden_dim * bottleneck_dim + bottleneck_dim
    return mlp + bottleneck_dim * out_dim + out_dim


def forward_bytes(arch: str, patch_size: int, img_size: int, num_register_tokens: int = 0) -> int:
    """A lower bound of one image's activations in an inference forward at `img_size`."""
    spec = ARCH_SPECS[arch]
    tokens = 1 + num_register_tokens + patch_tokens(img_size, patch_size)
    return FLOAT_BYTES * FORWARD_FLOATS * tokens * spec.embed_dim


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"
