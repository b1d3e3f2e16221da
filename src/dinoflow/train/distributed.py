"""Process-group setup from the torchrun environment, and model wrapping (DDP or FSDP2).

torchrun, torchx, Kubeflow Trainer and PyTorchJob all set RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; without them the job runs as a single process with no group.
gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


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
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def wrap_model(module: nn.Module, strategy: str, env: DistEnv, reshard_after_forward: bool | None = None) -> nn.Module:
    """DDP, or FSDP2 `fully_shard` per transformer block + root; unchanged on one process."""
    if not env.distributed:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        kw = {} if reshard_after_forward is None else {"reshard_after_forward": reshard_after_forward}
        for sub in module.modules():
            for blk in getattr(sub, "blocks", []):
                fully_shard(blk, **kw)
        fully_shard(module, **kw)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[env.local_rank] if env.device.type == "cuda" else None)


def shard_like(module: nn.Module, strategy: str, env: DistEnv) -> nn.Module:
    """The EMA teacher under FSDP is sharded exactly like the student so EMA works on local shards.

    It never runs a backward, so it must reshard after its forward itself (FSDP2 keeps the
    root's parameters gathered until the backward otherwise).
    """
    if env.distributed and strategy == "fsdp":
        return wrap_model(module, "fsdp", env, reshard_after_forward=True)
    return module
