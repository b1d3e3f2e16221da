"""Shared pieces of the checkpoint tests: a small trained network with optimiser state, and two gloo
ranks in spawned processes."""

from __future__ import annotations

import socket
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
from torch import nn


def run_two_ranks(target: Callable[..., Any], *args: Any, timeout: float = 240) -> int:
    """`target(rank, port, *args)` in two spawned processes on a free port; asserts both exit 0.
    Returns the port (the ranks' MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, port, *args)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0
    return port


def small_parts(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A tiny network after one AdamW step (so the optimiser holds state), seeded."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(3, 8)).sum().backward()
    opt.step()
    return net, opt
