"""Process-group setup from the torchrun environment, and model wrapping (DDP or FSDP2).

torchrun, torchx, Kubeflow Trainer and PyTorchJob all set RANK / WORLD_SIZE / LOCAL_RANK /
LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT; without them the job runs as a single process
with no group. gloo on CPU; on CUDA the default group carries CUDA tensors over NCCL and CPU
tensors over gloo, so small control messages (the stop flag) never wait for the GPU, and
checkpoints get a gloo group of their own (an asynchronous save's collectives run in a
background thread and must not interleave with the training's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from dinoflow.losses.distributed import all_reduce_sum
from dinoflow.train.objective import backbones_of

_CKPT_GROUP: tuple[object, dist.ProcessGroup] | None = None  # (the default group it belongs to, the group)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from dinoflow.errors import DinoflowError

            raise DinoflowError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (idempotent); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo",
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, local_world_size=local_world)


def checkpoint_group() -> dist.ProcessGroup | None:
    """The gloo group checkpoints use (None without a process group). Collective on first use:
    every rank reaches it at the same point (the first checkpoint save)."""
    global _CKPT_GROUP
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.group.WORLD
    if _CKPT_GROUP is None or _CKPT_GROUP[0] is not world:  # none yet, or the process group was re-created
        _CKPT_GROUP = (world, dist.new_group(backend="gloo"))
    return _CKPT_GROUP[1]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank's flag is set (a CPU tensor: no wait for a GPU)."""
    t = all_reduce_sum(torch.tensor([1.0 if flag else 0.0]))
    return bool(t.item() > 0)


def reshard_policy(setting: bool | str, env: DistEnv) -> bool | int:
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
    from torch.distributed.fsdp import MixedPrecisionPolicy

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
    blocks = [
        blk
        for b in backbones.values()
        for blk in (b.block_list() if hasattr(b, "block_list") else list(getattr(b, "blocks", [])))
    ]
    heads = (
        [m for name, m in module.param_modules().items() if name not in backbones]
        if hasattr(module, "param_modules")
        else []
    )
    return blocks, heads


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
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    raf = reshard_policy(reshard_after_forward, env)
    mp = _mp_policy(env, precision)
    blocks, heads = fsdp_units(module)
    for unit in blocks + heads:
        fully_shard(unit, reshard_after_forward=raf, mp_policy=mp)
    fully_shard(module, reshard_after_forward=raf if raf is not True else False, mp_policy=mp)
    # Explicit prefetch: gather the next block's (backward: the previous block's) parameters
    # while this one computes, one unit ahead, instead of relying on the implicit order.
    order = blocks + heads
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
        from torch.distributed.fsdp import fully_shard

        mp = _mp_policy(env, precision)
        blocks, heads = fsdp_units(module)
        for unit in blocks + heads:
            fully_shard(unit, reshard_after_forward=True, mp_policy=mp)
        fully_shard(module, reshard_after_forward=True, mp_policy=mp)
        for i, unit in enumerate(blocks[:-1]):
            unit.set_modules_to_forward_prefetch([blocks[i + 1]])
    return module
