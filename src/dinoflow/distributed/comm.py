"""The collectives curation needs, on torch.distributed (gloo on CPU, NCCL on CUDA), for numpy arrays.

One process (no RANK/WORLD_SIZE in the environment) is a world of size 1 and every collective is
a local copy, so the same step code runs unchanged as one process, under `torchrun`, and inside a
Kubeflow step or TrainJob. No object is pickled: only numeric arrays cross process boundaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Comm:
    """This process's place in the job: `rank` of `world`; `device` is where GEMMs run."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _backend_device(self) -> str:
        # NCCL moves CUDA tensors only; gloo moves CPU tensors.
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def _t(self, a: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(self._backend_device)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, a: np.ndarray) -> np.ndarray:
        """Elementwise sum over ranks (int64 sums are exact, so their order does not matter)."""
        a = np.ascontiguousarray(a)
        if self.world == 1:
            return a.copy()
        import torch.distributed as dist

        t = self._t(a)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def all_reduce_max(self, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a)
        if self.world == 1:
            return a.copy()
        import torch.distributed as dist

        t = self._t(a)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().numpy()

    def all_gather(self, a: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (same dtype and trailing shape, any length), in rank order."""
        a = np.ascontiguousarray(a)
        if self.world == 1:
            return [a.copy()]
        import torch
        import torch.distributed as dist

        n = self.all_gather_int(len(a))
        pad = np.zeros((max(n),) + a.shape[1:], a.dtype)
        pad[: len(a)] = a
        t = self._t(pad)
        outs = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(outs, t)
        return [o.cpu().numpy()[:k] for o, k in zip(outs, n)]

    def all_gather_cat(self, a: np.ndarray) -> np.ndarray:
        return np.concatenate(self.all_gather(a))

    def all_gather_int(self, v: int) -> list[int]:
        if self.world == 1:
            return [int(v)]
        import torch
        import torch.distributed as dist

        t = self._t(np.array([v], np.int64))
        outs = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(outs, t)
        return [int(o.item()) for o in outs]

    def sum_int(self, v: int) -> int:
        return int(self.all_reduce_sum(np.array([v], np.int64))[0])

    def all_to_all(self, arrays: Sequence[np.ndarray], dest: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Send row i of every array to rank dest[i]. Returns (received arrays, source rank of each row).

        Rows arrive grouped by source rank, each group in the sender's order, so the result is
        the same whatever the timing. `send_back` returns per-row answers along the same route.
        """
        dest = np.asarray(dest, np.int64)
        if self.world == 1:  # everything stays here, in order
            return [np.asarray(a) for a in arrays], np.zeros(len(dest), np.int64)
        order = np.argsort(dest, kind="stable")
        counts = np.bincount(dest, minlength=self.world).astype(np.int64)
        sent = [np.ascontiguousarray(a[order]) for a in arrays]
        recv_counts = self._exchange_counts(counts)
        out = [self._a2a(a, counts, recv_counts) for a in sent]
        src = np.repeat(np.arange(self.world, dtype=np.int64), recv_counts)
        return out, src

    def send_back(self, answers: Sequence[np.ndarray], src: np.ndarray, dest: np.ndarray) -> list[np.ndarray]:
        """The inverse route of `all_to_all(…, dest)`: row j of `answers` (a received row) goes back
        to its sender; returned rows are in the sender's original row order."""
        dest = np.asarray(dest, np.int64)
        if self.world == 1:
            return [np.asarray(a) for a in answers]
        order = np.argsort(dest, kind="stable")
        send_counts = np.bincount(src, minlength=self.world).astype(np.int64)
        recv_counts = np.bincount(dest, minlength=self.world).astype(np.int64)
        back = [self._a2a(np.ascontiguousarray(a), send_counts, recv_counts) for a in answers]
        out = []
        for a in back:
            r = np.empty_like(a)
            r[order] = a
            out.append(r)
        return out

    def _exchange_counts(self, counts: np.ndarray) -> np.ndarray:
        import torch
        import torch.distributed as dist

        t = self._t(counts)
        r = torch.empty_like(t)
        dist.all_to_all_single(r, t)
        return r.cpu().numpy()

    def _a2a(self, a: np.ndarray, send: np.ndarray, recv: np.ndarray) -> np.ndarray:
        import torch
        import torch.distributed as dist

        width = int(np.prod(a.shape[1:], dtype=np.int64))
        flat = a.reshape(len(a), width)
        t = self._t(flat.view(np.uint8) if a.dtype == np.bool_ else flat)
        out = torch.empty((int(recv.sum()), width), dtype=t.dtype, device=t.device)
        dist.all_to_all_single(out, t, output_split_sizes=recv.tolist(), input_split_sizes=send.tolist())
        res = out.cpu().numpy()
        if a.dtype == np.bool_:
            res = res.view(np.bool_)
        return res.reshape((len(res),) + a.shape[1:])


def init_comm() -> Comm:
    """Join the process group torchrun (or a Trainer pod) describes; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    import torch

    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(local_rank)
        # TF32 GEMMs round the inputs to 10 bits: near-duplicate scores need full fp32.
        torch.backends.cuda.matmul.allow_tf32 = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device != "cpu" else "gloo")
    return Comm(rank=rank, world=world, device=device)
