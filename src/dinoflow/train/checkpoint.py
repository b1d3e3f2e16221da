"""Resumable checkpoints with `torch.distributed.checkpoint` (DCP).

Saves are asynchronous by default (`start_save`, then `PendingSave.finish`): the state is
staged to CPU memory and written in the background while training goes on.

A checkpoint directory `ckpt/step_<N>/` holds the DCP shards of student, teacher, optimiser
and objective state (loss centres, student EMA) plus `meta.json` (step, data positions,
config). DCP stores tensors by their global (unsharded) names, so a job saved by N processes
resumes on M — DDP or FSDP2 alike. It is written to a hidden temp directory and renamed when
complete, and `ckpt/latest` names the newest complete one: a job killed mid-save leaves the
previous checkpoint as the one a restart trusts. `meta.json` also records the size and sha256 of
every other file, verified before a resume loads anything (`checkpoint_digests.py`); when the
directory `latest` names was deleted (a damaged one, on the error's advice), the newest complete
checkpoint left is resumed. A failed write (full disk, no permission) names the checkpoint path.

Reading never unpickles anything but DCP's own metadata classes and plain values
(`dinoflow.train.safe_dcp`): a crafted checkpoint directory gives a `CheckpointError`, not code.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from dinoflow.distributed.env import barrier, checkpoint_group
from dinoflow.errors import DinoflowError, find_os_error, full_disk_error, storage_error
from dinoflow.io import atomic_write_text
from dinoflow.models.wrappers import strip_wrapper_names
from dinoflow.train.checkpoint_digests import (
    DIGESTS_KEY,
    Digests,
    complete_digests,
    gather,
    own_shards,
    verify_checkpoint,
)
from dinoflow.train.safe_dcp import CheckpointError, SafeFileSystemReader, SafeLoadPlanner, read_metadata

KEEP_LAST = 2
_STEP_DIR = re.compile(r"step_\d{8}")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    p = Path(ckpt_dir) / "latest"
    if not p.exists():
        return None
    name = p.read_text().strip()
    if not _STEP_DIR.fullmatch(name):  # `latest` only ever names a sibling step_<N> directory
        raise CheckpointError(
            f"{p} names {name!r}, not a step_<N> checkpoint beside it; delete {ckpt_dir} "
            "or set train.restart=true to start over"
        )
    target = Path(ckpt_dir) / name
    if (target / "meta.json").exists():
        return target
    # Its directory was deleted (a damaged checkpoint, as the error advises): the newest complete one left.
    # Only published checkpoints have a step_<N> name, and every one of them holds meta.json.
    done = sorted(
        d for d in Path(ckpt_dir).glob("step_*") if _STEP_DIR.fullmatch(d.name) and (d / "meta.json").is_file()
    )
    return done[-1] if done else None


@contextmanager
def _naming_failed_writes(where: Path) -> Iterator[None]:
    """A full disk or a denied write while saving a checkpoint: a StorageError naming `where`."""
    try:
        yield
    except DinoflowError:
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        named = storage_error(e, where) or full_disk_error(e, [where], where)
        if named is None:
            raise
        raise named from e


def _state(
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    train_module: nn.Module,
    extra: dict[str, torch.Tensor],
) -> dict[str, Any]:
    state: dict[str, Any] = {name: get_model_state_dict(m) for name, m in modules.items()}
    state["optim"] = get_optimizer_state_dict(train_module, optimizer)
    state["objective"] = dict(extra)
    return state


class PendingSave:
    """A checkpoint being written. `finish()` (collective) waits for the write, then publishes
    it: meta.json, the rename from the temp directory, `latest`, and pruning. Until then the
    previous checkpoint stays the one a restart trusts."""

    def __init__(self, future: Future, tmp: Path, final: Path, step: int, meta: dict[str, Any], is_main: bool) -> None:
        # `future` yields the digests of the shards this rank wrote, once they are written
        self.future, self.tmp, self.final, self.step, self.meta, self.is_main = future, tmp, final, step, meta, is_main

    def finish(self) -> Path:
        with _naming_failed_writes(self.final):
            mine = self.future.result()
        barrier()
        digests = {name: d for part in gather(mine) for name, d in part.items()}
        if self.is_main:
            with _naming_failed_writes(self.final):
                self._publish(complete_digests(self.tmp, digests))
        barrier()
        return self.final

    def _publish(self, digests: Digests) -> None:
        ckpt_dir = self.final.parent
        meta = {**self.meta, "step": self.step, DIGESTS_KEY: digests}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        shutil.rmtree(self.final, ignore_errors=True)
        self.tmp.rename(self.final)
        atomic_write_text(ckpt_dir / "latest", self.final.name + "\n")
        done = sorted(d for d in ckpt_dir.glob("step_*") if d.is_dir())
        for old in done[:-KEEP_LAST]:
            shutil.rmtree(old, ignore_errors=True)


def start_save(
    ckpt_dir: str | Path,
    step: int,
    *,
    modules: dict[str, nn.Module],
    train_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, torch.Tensor],
    meta: dict[str, Any],
    is_main: bool,
    files: Mapping[str, str | Path] | None = None,
    asynchronous: bool = True,
) -> PendingSave:
    """Collective. Asynchronous: the state is copied to CPU memory now (training may change the
    tensors right after) and written by a background thread over a gloo group of its own. `files`
    are copied now, so they hold what was written up to this step."""
    ckpt_dir = Path(ckpt_dir)
    name = f"step_{step:08d}"
    tmp, final = ckpt_dir / f".{name}.tmp", ckpt_dir / name
    if is_main:
        with _naming_failed_writes(final):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
    barrier()
    if is_main:
        with _naming_failed_writes(final):
            for file_name, src in (files or {}).items():
                if Path(src).is_file():
                    shutil.copyfile(src, tmp / file_name)
    state = _state(modules, optimizer, train_module, extra)
    single = not torch.distributed.is_initialized()
    if single:  # a single process is a supported mode; the background writer would warn at any time
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    group = checkpoint_group()
    rank = 0 if single else torch.distributed.get_rank()
    if asynchronous:
        written = dcp.async_save(state, checkpoint_id=str(tmp), process_group=group, no_dist=single)
        assert isinstance(written, Future)  # an AsyncSaveResponse comes only with an async_stager
        # hash this rank's shards once written, still in the background (hashlib releases the GIL)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-digest")
        future = pool.submit(lambda: (written.result(), own_shards(tmp, rank))[1])
        pool.shutdown(wait=False)  # its thread ends after this one task
    else:
        with _naming_failed_writes(final):
            dcp.save(state, checkpoint_id=str(tmp), process_group=group, no_dist=single)
        future = Future()
        future.set_result(own_shards(tmp, rank))
    return PendingSave(future, tmp, final, step, meta, is_main)


def load_checkpoint(
    path: str | Path,
    *,
    modules: dict[str, nn.Module],
    train_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Load in place (any world size); returns meta.json. `extra` tensors are filled in place."""
    path = Path(path)
    state = _state(modules, optimizer, train_module, extra)
    metadata = read_metadata(path / ".metadata")
    unsaved = _keep_saved_optimizer_states(state["optim"], metadata.state_dict_metadata)
    reader = SafeFileSystemReader(path, metadata=metadata)
    verify_checkpoint(path)  # collective; after the metadata check, so a crafted file is named as such
    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
    except CheckpointException as e:  # DCP wraps each rank's error: surface ours unwrapped
        ours = [exc for exc, _tb in e.failures.values() if isinstance(exc, CheckpointError)]
        if ours:
            raise ours[0] from None
        raise _unreadable(path, e) from e
    for name, m in modules.items():
        set_model_state_dict(m, state[name], options=StateDictOptions(strict=True))
    set_optimizer_state_dict(train_module, optimizer, state["optim"], options=StateDictOptions(strict=not unsaved))
    for name, p in train_module.named_parameters():
        if strip_wrapper_names(name) in unsaved:
            optimizer.state.pop(p, None)  # never stepped before the save: no state, as then
    for k, v in state["objective"].items():
        if isinstance(v, torch.Tensor) and k in extra:
            extra[k].copy_(v)
    return json.loads((path / "meta.json").read_text())


def _unreadable(path: Path, e: CheckpointException) -> DinoflowError:
    """A checkpoint that verified but that DCP still could not read: one line, not DCP's traceback."""
    named = storage_error(e, path) if find_os_error(e) is not None else None
    if named is not None:
        return named
    first = next(iter(e.failures.values()), None)
    exc = first[0] if isinstance(first, tuple) and first else first
    gist = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}" if exc is not None else str(e)[:300]
    return CheckpointError(
        f"checkpoint {path} could not be read ({gist}); delete it and rerun to resume from an older "
        f"checkpoint, or set train.restart=true (or delete {path.parent}) to start over"
    )


def _keep_saved_optimizer_states(optim_state: dict[str, Any], saved: Any) -> set[str]:
    """Leave out of the load the optimiser states that the checkpoint does not hold.

    AdamW creates a parameter's state at its first gradient; a parameter that never had one (the
    mask token when nothing is masked, as in distillation) has none when the run is saved. The
    fresh optimiser of a resume has every state initialised (DCP does that to plan the load), so
    asking for those would fail; loading without them leaves them absent, as in the run that saved."""
    states = optim_state.get("state", {})
    unsaved = {f for f in states if not any(k.startswith(f"optim.state.{f}.") for k in saved)}
    for fqn in unsaved:
        del states[fqn]
    return unsaved


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group; a single process is a supported mode here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield
