"""AdamW parameter groups of the DINOv2 recipe.

Per parameter: a layer-wise LR multiplier (decay^(depth+1 - layer_id), layer 0 = embeddings,
layer i+1 = block i, heads and the final norm at depth+1 → multiplier 1), a patch-embed LR
multiplier, no weight decay on biases / norms / LayerScale gammas, and a flag for the heads'
last layer (its LR is zero while it is frozen). Parameters with equal multipliers share a
group; the loop sets each group's lr and weight_decay every step from the schedules.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from dinoflow.config import OptimConfig
from dinoflow.models.wrappers import strip_wrapper_names

_EMBED_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")
# "blocks.<i>." or, in the official chunked layout, "blocks.<chunk>.<i>." (i is the global block index)
_BLOCK = re.compile(r"blocks\.(?:\d+\.)?(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i+1 for block i, depth+1 for everything after the blocks.

    `name` is relative to the backbone: "blocks.3.attn.qkv.weight", or with block chunks
    "blocks.1.3.attn.qkv.weight" (chunk 1 holds block 3; the block index is the second number).
    """
    if name.split(".")[0] in _EMBED_NAMES:
        return 0
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1


def param_groups(modules: dict[str, nn.Module], cfg: OptimConfig, backbone_depth: dict[str, int]) -> list[dict]:
    """Fused AdamW groups for named submodules (e.g. {"backbone": ..., "dino_head": ...}).

    `backbone_depth[name]` is the block count for backbones; modules absent from it (heads) get
    multiplier 1. Each group carries `lr_multiplier`, `wd_multiplier`, `is_last_layer`.
    """
    fused: "OrderedDict[tuple, dict]" = OrderedDict()
    for mod_name, module in modules.items():
        depth = backbone_depth.get(mod_name, 0)
        for pname, p in module.named_parameters():
            if not p.requires_grad:
                continue
            name = strip_wrapper_names(pname)  # the recipe's names, not the wrappers'
            lr_mult = cfg.layerwise_decay ** (depth + 1 - layer_id(name, depth)) if depth > 0 else 1.0
            if "patch_embed" in name:
                lr_mult *= cfg.patch_embed_lr_mult
            wd_mult = 0.0 if (name.endswith(".bias") or "norm" in name or "gamma" in name) else 1.0
            is_last = "last_layer" in name
            key = (round(lr_mult, 12), wd_mult, is_last)
            group = fused.setdefault(
                key,
                {
                    "params": [],
                    "lr_multiplier": lr_mult,
                    "wd_multiplier": wd_mult,
                    "is_last_layer": is_last,
                    "names": [],
                },
            )
            group["params"].append(p)
            group["names"].append(f"{mod_name}.{name}")
    return list(fused.values())


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass per parameter instead of a dozen element-wise ops
    with temporaries; CPU and CUDA). lr/weight_decay are placeholders: apply_schedules() sets
    them before every step."""
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=cfg.betas, fused=True)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = (last_layer_lr if g["is_last_layer"] else lr) * g["lr_multiplier"]
        g["weight_decay"] = wd * g["wd_multiplier"]
