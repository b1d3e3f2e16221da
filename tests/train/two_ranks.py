"""Run a function as two gloo ranks in spawned processes (the checkpoint tests' multi-rank cases)."""

from __future__ import annotations

import socket
from typing import Any, Callable

import torch.multiprocessing as mp


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
