"""Seeing through the wrappers training puts around a module, in one place.

DDP keeps the model as `.module`, `torch.compile` as `._orig_mod`, and FSDP1 as
`._fsdp_wrapped_module`; their state-dict and parameter names carry those attribute names as
path components. Everything that needs the model itself, or its recipe names, goes through here.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

# attribute names (= name components) the wrappers add
WRAPPER_COMPONENTS = ("module", "_orig_mod", "_fsdp_wrapped_module")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside any stack of DDP / torch.compile / FSDP1 wrappers (itself when bare).

    Only wrapper classes are peeled: a model with its own child named `module` stays as it is.
    """
    while True:
        compiled = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
        fsdp1 = getattr(module, "_fsdp_wrapped_module", None)
        if isinstance(module, (DistributedDataParallel, DataParallel)):
            module = module.module
        elif isinstance(compiled, nn.Module):
            module = compiled
        elif isinstance(fsdp1, nn.Module):
            module = fsdp1
        else:
            return module


def strip_wrapper_names(name: str) -> str:
    """A parameter or state-dict name without the wrappers' components:
    "module._orig_mod.blocks.0.attn.qkv.weight" → "blocks.0.attn.qkv.weight"."""
    return ".".join(c for c in name.split(".") if c not in WRAPPER_COMPONENTS)
