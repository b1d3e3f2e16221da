"""One optimiser step, and how the trained networks are set up for it.

Nothing in a step waits for the device: the loss, its terms and the gradient norms come back
as device tensors, and the loop reads them (one transfer) every `log_every` steps.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from dinoflow.config import TrainConfig
from dinoflow.distributed.collectives import all_reduce_sum
from dinoflow.distributed.env import DistEnv
from dinoflow.errors import DinoflowError
from dinoflow.models.wrappers import unwrap
from dinoflow.train.objective import Batch, Objective, Schedule, TrainModule, backbones_of
from dinoflow.train.optim import apply_schedules
from dinoflow.train.parallelize import shard_like, wrap_model
from dinoflow.train.phases import mark


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA only: this class of CPU has no fast bf16."""
    use_bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    if precision == "bf16" and device.type != "cuda":
        raise DinoflowError("train.precision bf16 needs a CUDA device; CPU runs fp32 (set precision: auto)")
    return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else torch.autocast("cpu", enabled=False)


def clip_gradients(net: nn.Module, max_norm: float | None) -> dict[str, torch.Tensor]:
    """Clip each submodule (backbone, heads) separately, as the recipe does; norms stay on the device."""
    norms: dict[str, torch.Tensor] = {}
    if max_norm is None:
        return norms
    for name, mod in cast(TrainModule, unwrap(net)).param_modules().items():
        params = [p for p in mod.parameters() if p.grad is not None]
        if params:
            n = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
            norms[f"grad_norm_{name}"] = (n.full_tensor() if hasattr(n, "full_tensor") else n).detach()
    return norms


def train_step(
    objective: Objective,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    views: Batch,
    s: Schedule,
    *,
    clip_grad: float | None,
    precision: str = "auto",
    device: torch.device | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on prepared views. Returns (global mean loss, metrics), 0-d device tensors.

    A non-finite loss is not checked here (that would wait for the device every step): the
    loop checks every value it reads, and before every checkpoint.
    """
    apply_schedules(optimizer, lr=s["lr"], wd=s["wd"], last_layer_lr=s["last_layer_lr"])
    with autocast_context(device or torch.device("cpu"), precision):
        loss, metrics = objective.loss(net, views, s)
    red = all_reduce_sum(torch.stack([loss.detach().float(), torch.ones((), device=loss.device)]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark("backward")
    metrics = dict(metrics)
    metrics.update(clip_gradients(net, clip_grad))
    optimizer.step()
    objective.after_step(net, s)
    mark("optimizer_ema")
    return red[0] / red[1], metrics


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """`train.compile`: "auto" compiles on CUDA (the fused element-wise kernels are the GPU's
    gain) and not on a CPU (the eager CPU step is as fast, and compiling takes minutes)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_blocks(module: nn.Module, device: torch.device, backend=None) -> None:
    """torch.compile each transformer block on its own (one graph each, no breaks; blocks share
    their compiled code). Module names and state dicts are unchanged. The last block keeps
    computing only the tokens the losses use (`prune_last_block`): their number changes every
    step, so it is compiled with shapes that may change (one more compilation at the first new
    count, that dimension symbolic from then on) where the others are static."""
    for backbone in backbones_of(module).values():
        blocks = backbone.block_list()
        for blk in blocks[:-1]:
            blk.compile(fullgraph=True, dynamic=False, backend=backend or "inductor")
        blocks[-1].compile(fullgraph=True, dynamic=None, backend=backend or "inductor")


def prepare_networks(
    objective: Objective, tcfg: TrainConfig, env: DistEnv, compile_backend: str | None = None
) -> nn.Module:
    """Backbone settings (packing, checkpointing), wrapping (DDP / FSDP2) of the trained network,
    sharding of the EMA copies like it, then per-block compilation. Returns the train module."""
    module = objective.train_module()
    others = list(objective.checkpoint_modules().values())
    for m in [module, *others]:
        for backbone in backbones_of(m).values():
            if hasattr(backbone, "pack_crops"):
                backbone.pack_crops = tcfg.pack_crops
                backbone.set_activation_checkpointing(tcfg.activation_checkpointing)
    net = wrap_model(
        module, tcfg.strategy, env, reshard_after_forward=tcfg.fsdp_reshard_after_forward, precision=tcfg.precision
    )
    for m in others:
        shard_like(m, tcfg.strategy, env, precision=tcfg.precision)
    if compile_enabled(tcfg.compile, env.device):
        for m in [unwrap(net), *others]:
            compile_blocks(m, env.device, backend=compile_backend)
    return net
