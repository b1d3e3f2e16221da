"""Exponential moving averages of trained networks: the pretraining teacher, the distilled
student's EMA (the network each stage exports)."""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target ← m·target + (1−m)·source = lerp(target, source, 1−m), one fused pass over the
    parameters (local shards under FSDP)."""

    def local(p):
        return p.to_local() if hasattr(p, "to_local") else p

    t = [local(p) for p in target.parameters()]
    s = [local(p).detach() for p in source.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off: the starting point of an EMA of `module`."""
    m = copy.deepcopy(module)
    m.requires_grad_(False)
    return m
