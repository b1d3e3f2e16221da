"""The one-node multi-process launch: `torchrun --standalone --nproc-per-node=N -m dinoflow <stage>`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR for every worker; the training loop
reads them (every launcher speaks torchrun's environment), so the same entry runs under torchrun, torchx and
Kubeflow Trainer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

from dinoflow.errors import DinoflowError

# Stages that run as one process, under torchrun or as a TrainJob (curate: its global steps).
TRAINING_STAGES = ("pretrain", "distill", "curate")


def stage_argv(stage: str, config_path: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """`-m dinoflow <stage> -c <config> -S k=v ...`: the module part of a torchrun command."""
    if stage not in TRAINING_STAGES:
        raise DinoflowError(f"only {', '.join(TRAINING_STAGES)} run under torchrun; got {stage!r}")
    argv = ["-m", "dinoflow", stage, "-c", str(config_path)]
    for o in overrides:
        argv += ["-S", str(o)]
    return argv


def torchrun_argv(
    stage: str,
    config_path: str | Path,
    *,
    nproc_per_node: int,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """A single-node torchrun command line (standalone rendezvous on a free local port)."""
    if nproc_per_node < 1:
        raise DinoflowError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc_per_node}",
        *stage_argv(stage, config_path, overrides),
    ]


def run_torchrun(argv: Sequence[str], *, cwd: str | Path | None = None, timeout: float | None = None) -> None:
    """Run a torchrun command, streaming its output; a non-zero exit becomes a DinoflowError."""
    try:
        proc = subprocess.run(list(argv), cwd=cwd, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DinoflowError(f"torchrun did not finish within {timeout} s: {' '.join(argv)}") from None
    if proc.returncode != 0:
        raise DinoflowError(f"torchrun exited with status {proc.returncode}: {' '.join(argv)}")
