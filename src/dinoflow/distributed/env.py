"""This process's place in the job: process-group setup from the torchrun environment.

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

from dinoflow.distributed.collectives import all_reduce_sum
from dinoflow.errors import DinoflowError

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
            device_id=device if device.type == "cuda" else None,
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
