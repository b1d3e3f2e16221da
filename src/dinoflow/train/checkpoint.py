"""Resumable checkpoints with `torch.distributed.checkpoint` (DCP).

A checkpoint directory `ckpt/step_<N>/` holds the DCP shards of student, teacher, optimiser
and objective state (loss centres, student EMA) plus `meta.json` (step, data positions,
config). DCP stores tensors by their global (unsharded) names, so a job saved by N processes
resumes on M — DDP or FSDP2 alike. It is written to a hidden temp directory and renamed when
complete, and `ckpt/latest` names the newest complete one: a job killed mid-save leaves the
previous checkpoint as the one a restart trusts.

Reading never unpickles anything but DCP's own metadata classes and plain values
(`dinoflow.train.safe_dcp`): a crafted checkpoint directory gives a `CheckpointError`, not code.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from dinoflow.io import atomic_write_text
from dinoflow.train.distributed import barrier
from dinoflow.train.safe_dcp import CheckpointError, SafeFileSystemReader, SafeLoadPlanner, read_metadata

KEEP_LAST = 2
_STEP_DIR = re.compile(r"step_\d{8}")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    p = Path(ckpt_dir) / "latest"
    if not p.exists():
        return None
    name = p.read_text().strip()
    if not _STEP_DIR.fullmatch(name):  # `latest` only ever names a sibling step_<N> directory
        raise CheckpointError(f"{p} names {name!r}, not a step_<N> checkpoint beside it; delete {ckpt_dir} "
                              "or set train.restart=true to start over")
    target = Path(ckpt_dir) / name
    return target if (target / "meta.json").exists() else None


def _state(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, train_module: nn.Module,
           extra: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[str, Any] = {name: get_model_state_dict(m) for name, m in modules.items()}
    state["optim"] = get_optimizer_state_dict(train_module, optimizer)
    state["objective"] = dict(extra)
    return state


def save_checkpoint(ckpt_dir: str | Path, step: int, *, modules: dict[str, nn.Module], train_module: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, torch.Tensor], meta: dict[str, Any],
                    is_main: bool, files: dict[str, str | Path] | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory. `files` (name →
    path, main rank): copies taken into the checkpoint, e.g. the metrics CSV up to this step."""
    ckpt_dir = Path(ckpt_dir)
    name = f"step_{step:08d}"
    tmp, final = ckpt_dir / f".{name}.tmp", ckpt_dir / name
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with _single_process_quiet():
        dcp.save(_state(modules, optimizer, train_module, extra), checkpoint_id=str(tmp))
    barrier()
    if is_main:
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2, default=str))
        for file_name, src in (files or {}).items():
            if Path(src).is_file():
                shutil.copyfile(src, tmp / file_name)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(ckpt_dir / "latest", name + "\n")
        done = sorted(d for d in ckpt_dir.glob("step_*") if d.is_dir())
        for old in done[:-KEEP_LAST]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: str | Path, *, modules: dict[str, nn.Module], train_module: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load in place (any world size); returns meta.json. `extra` tensors are filled in place."""
    path = Path(path)
    state = _state(modules, optimizer, train_module, extra)
    reader = SafeFileSystemReader(path, metadata=read_metadata(path / ".metadata"))
    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
    except CheckpointException as e:  # DCP wraps each rank's error: surface ours unwrapped
        ours = [exc for exc, _tb in e.failures.values() if isinstance(exc, CheckpointError)]
        if ours:
            raise ours[0] from None
        raise
    for name, m in modules.items():
        set_model_state_dict(m, state[name], options=StateDictOptions(strict=True))
    set_optimizer_state_dict(train_module, optimizer, state["optim"])
    for k, v in state["objective"].items():
        if isinstance(v, torch.Tensor) and k in extra:
            extra[k].copy_(v)
    return json.loads((path / "meta.json").read_text())


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group; a single process is a supported mode here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield
