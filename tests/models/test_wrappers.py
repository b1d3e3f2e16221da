"""One way through the training wrappers: modules (DDP, torch.compile) and their names."""

from __future__ import annotations

import torch
from torch import nn

from dinoflow.models.wrappers import strip_wrapper_names, unwrap


class _HasChildNamedModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(2, 2)


def test_unwrap_peels_compile_and_ddp_but_not_a_child_named_module(monkeypatch):
    from torch.nn.parallel import DistributedDataParallel

    inner = nn.Linear(3, 3)
    compiled = torch.compile(inner, backend="eager")
    assert compiled is not inner and unwrap(compiled) is inner
    # a DDP instance without a process group: only the attribute layout matters here
    ddp = DistributedDataParallel.__new__(DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = compiled
    assert unwrap(ddp) is inner
    own = _HasChildNamedModule()
    assert unwrap(own) is own and unwrap(inner) is inner


def test_strip_wrapper_names_keeps_the_model_names():
    assert strip_wrapper_names("module._orig_mod.blocks.0.attn.qkv.weight") == "blocks.0.attn.qkv.weight"
    assert strip_wrapper_names("_fsdp_wrapped_module.dino_head.last_layer.weight_g") == "dino_head.last_layer.weight_g"
    assert strip_wrapper_names("submodule.weight") == "submodule.weight"  # a component, not a substring
