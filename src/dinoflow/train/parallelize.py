"""Wrapping the trained networks for data parallelism: DDP, or FSDP2 with its reshard and
mixed-precision policies (bf16 parameters and compute on CUDA, fp32 gradient reduction).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from dinoflow.distributed.env import DistEnv
from dinoflow.train.objective import backbones_of


def reshard_policy(setting: bool | int | str, env: DistEnv) -> bool | int:
    """FSDP2 `reshard_after_forward` for the trained blocks and heads, from the topology.

    "auto": on one node, reshard (ZeRO-3: gathering again over NVLink in the backward is cheap
    and the memory goes to activations); across nodes, reshard only down to the node
    (`int` = GPUs per node), so the backward's all-gathers stay on the fast links.
    """
    if setting != "auto":
        return bool(setting)
    if env.nodes > 1 and env.local_world_size > 1:
        return env.local_world_size
    return True


def _mp_policy(env: DistEnv, precision: str):
    """bf16 parameters for compute with fp32 gradient reduction on CUDA; plain fp32 on CPU."""
    if env.device.type == "cuda" and precision in ("auto", "bf16"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def fsdp_units(module: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(transformer blocks in order, heads) of a train module with `backbone` and `param_modules()`.

    The blocks come from `block_list()`, the modules the forward really calls: with the
    official chunked layout (`block_chunks > 0`) the chunk containers are never called, so
    sharding them would leave their parameters sharded at the first forward.
    """
    backbones = backbones_of(module)
    blocks = [blk for b in backbones.values() for blk in _blocks(b)]
    param_modules = getattr(module, "param_modules", None)
    heads = [m for name, m in param_modules().items() if name not in backbones] if param_modules is not None else []
    return blocks, heads


def _blocks(backbone: nn.Module) -> list[nn.Module]:
    block_list = getattr(backbone, "block_list", None)
    return list(block_list()) if block_list is not None else list(getattr(backbone, "blocks", []))


def wrap_model(
    module: nn.Module,
    strategy: str,
    env: DistEnv,
    reshard_after_forward: bool | int | str = "auto",
    precision: str = "auto",
) -> nn.Module:
    """DDP, or FSDP2 `fully_shard` per transformer block, per head and at the root, with a
    mixed-precision policy and explicit forward/backward prefetch; unchanged on one process."""
    if not env.distributed:
        return module
    if strategy != "fsdp":
        return DDP(module, device_ids=[env.local_rank] if env.device.type == "cuda" else None)

    raf = reshard_policy(reshard_after_forward, env)
    mp = _mp_policy(env, precision)
    blocks, heads = fsdp_units(module)
    order = [fully_shard(unit, reshard_after_forward=raf, mp_policy=mp) for unit in blocks + heads]
    fully_shard(module, reshard_after_forward=raf if raf is not True else False, mp_policy=mp)
    # Explicit prefetch: gather the next block's (backward: the previous block's) parameters
    # while this one computes, one unit ahead, instead of relying on the implicit order.
    for i, unit in enumerate(order):
        if i + 1 < len(order):
            unit.set_modules_to_forward_prefetch([order[i + 1]])
        if i > 0:
            unit.set_modules_to_backward_prefetch([order[i - 1]])
    return module


def shard_like(module: nn.Module, strategy: str, env: DistEnv, precision: str = "auto") -> nn.Module:
    """The EMA teacher under FSDP is sharded exactly like the student so EMA works on local shards.

    It never runs a backward, so it must reshard after its forward itself (FSDP2 keeps the
    root's parameters gathered until the backward otherwise).
    """
    if env.distributed and strategy == "fsdp":
        mp = _mp_policy(env, precision)
        blocks, heads = fsdp_units(module)
        units = [fully_shard(unit, reshard_after_forward=True, mp_policy=mp) for unit in blocks + heads]
        fully_shard(module, reshard_after_forward=True, mp_policy=mp)
        sharded_blocks = units[: len(blocks)]
        for i, unit in enumerate(sharded_blocks[:-1]):
            unit.set_modules_to_forward_prefetch([sharded_blocks[i + 1]])
    return module
