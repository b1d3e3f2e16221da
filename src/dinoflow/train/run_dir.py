"""Where a training run keeps its state, and when it may pick that state up again.

- The run directory is the stage's `out_dir`: its exports (`backbone.pth`, `config.yaml`,
  `heads.pth`, the weights' `.sha256` records) and `train_config.yaml`, the settings it is being trained with.
- Checkpoints live in `<train.checkpoint_dir>/<stage>-<settings hash>/` (default checkpoint dir:
  `<out_dir>/ckpt`). Outside the DVC outs they survive `dvc repro` deleting those outs before a
  rerun, so a preempted stage resumes; keyed by the settings, a run with changed settings never
  resumes from them (and `dvc exp run -S pretrain.optim.base_lr=...`, whose outs DVC deleted,
  simply starts a fresh run next to them).
- The settings are the section minus RUNTIME_KEYS: what can change between a job and its resume
  without changing what is trained (where files go, how far to run now, how many processes or
  workers, device, logging). Changing the world size or the workers changes the data order, as
  documented in `dinoflow.train.data`, like any resume on other hardware.
- A run directory whose `train_config.yaml` records other settings is refused (naming the changed
  keys) unless `train.restart` is set, which deletes its exports and checkpoints first.
- A run that completes its schedule deletes its checkpoints once its exports are written: they
  are for resuming unfinished work, and a stage DVC reruns (its code or data changed, or
  `dvc repro -f`) must train again rather than re-export a finished run. A run stopped early by
  `train.max_steps` keeps them, so a later run with a larger `max_steps` continues it.
- One job at a time writes a run directory and a checkpoint directory (`run_lock`): a second
  one is refused by name (who holds it, since when); a lock left by a killed job is taken over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from dinoflow.config import dump_config
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_text
from dinoflow.writer_lock import writer_lock

RUNTIME_KEYS = frozenset(
    {
        "out_dir",
        "report_csv",
        "train.max_steps",
        "train.num_workers",
        "train.device",
        "train.strategy",
        "train.compile",
        "train.precision",
        "train.checkpoint_every",
        "train.log_every",
        "train.progress",
        "train.checkpoint_dir",
        "train.restart",
    }
)
TRAIN_CONFIG = "train_config.yaml"
LOCK = ".dinoflow.lock"  # in the run directory; a checkpoint directory's is `<it>.lock` beside it
EXPORTS = ("backbone.pth", "backbone.pth.sha256", "config.yaml", "heads.pth", "heads.pth.sha256")


@dataclass(frozen=True)
class RunDir:
    out: Path
    ckpt_dir: Path
    settings: dict[str, Any]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def training_settings(sec: BaseModel) -> dict[str, Any]:
    """The section's keys that define what is trained, flattened to dotted names (JSON values)."""
    return {k: v for k, v in _flatten(sec.model_dump(mode="json")).items() if k not in RUNTIME_KEYS}


def settings_hash(stage: str, settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([stage, settings], sort_keys=True).encode()).hexdigest()[:12]


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def describe_changes(stage: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(
        f"{stage}.{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in changed_keys(old, new)
    )


def settings_of(tree: Any, section_cls: type[BaseModel], where: Path) -> dict[str, Any]:
    """Settings of a dumped section (train_config.yaml, or a checkpoint's meta.json config)."""
    try:
        return training_settings(section_cls.model_validate(tree))
    except ValidationError as e:
        raise DinoflowError(
            f"{where} does not hold valid {section_cls.__name__} settings ({e.error_count()} "
            "errors): it was written by another version or edited; set train.restart=true "
            "to start over there"
        ) from None


def _recorded(out: Path, section_cls: type[BaseModel]) -> dict[str, Any] | None:
    path = out / TRAIN_CONFIG
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DinoflowError(f"{path} is unreadable ({e}); set train.restart=true to start over there") from None
    return settings_of(tree, section_cls, path)


def _ckpt_dir(stage: str, sec: Any, settings: dict[str, Any]) -> Path:
    root = Path(sec.train.checkpoint_dir) if sec.train.checkpoint_dir else Path(sec.out_dir) / "ckpt"
    return root / f"{stage}-{settings_hash(stage, settings)}"


def check_run_dir(stage: str, sec: Any) -> RunDir:
    """Read-only, every rank: refuse a run directory trained with other settings (unless restart)."""
    out, settings = Path(sec.out_dir), training_settings(sec)
    old = None if sec.train.restart else _recorded(out, type(sec))
    if old is not None and old != settings:
        raise DinoflowError(
            f"{out} holds a run trained with other settings ({out / TRAIN_CONFIG}): {describe_changes(stage, old, settings)}. "
            f"Set {stage}.train.restart=true to start over there (its exports and checkpoints are deleted), "
            f"choose another {stage}.out_dir, or go back to the recorded settings"
        )
    return RunDir(out=out, ckpt_dir=_ckpt_dir(stage, sec, settings), settings=settings)


def start_run_dir(stage: str, sec: Any, run: RunDir) -> None:
    """Main rank only: apply `train.restart`, then record the settings being trained."""
    run.out.mkdir(parents=True, exist_ok=True)
    if sec.train.restart:
        try:
            old = _recorded(run.out, type(sec))
        except DinoflowError:  # unreadable: nothing to clean up beyond this run's own checkpoints
            old = None
        for name in EXPORTS:
            (run.out / name).unlink(missing_ok=True)
        for student in getattr(sec, "students", None) or []:  # a family's exports: <out>/<name>/
            for name in EXPORTS:
                (run.out / student.name / name).unlink(missing_ok=True)
        shutil.rmtree(run.ckpt_dir, ignore_errors=True)
        if old is not None:
            shutil.rmtree(run.ckpt_dir.parent / f"{stage}-{settings_hash(stage, old)}", ignore_errors=True)
    atomic_write_text(run.out / TRAIN_CONFIG, dump_config(sec))


def check_checkpoint_settings(stage: str, sec: Any, ckpt: Path, run: RunDir) -> None:
    """A checkpoint is resumed only if its meta.json records these settings (a copied-in or edited
    checkpoint directory is refused rather than silently mixed into this run)."""
    meta_path = ckpt / "meta.json"
    try:
        config = json.loads(meta_path.read_text()).get("config")
    except (OSError, ValueError) as e:
        raise DinoflowError(
            f"{meta_path} is unreadable ({e}); delete {ckpt.parent} or set {stage}.train.restart=true to start over"
        ) from None
    old = settings_of(config, type(sec), meta_path)
    if old != run.settings:
        raise DinoflowError(
            f"{ckpt} was made with other settings: {describe_changes(stage, old, run.settings)}; "
            f"it is not resumed. Delete {ckpt.parent} or set {stage}.train.restart=true to start over"
        )


def finish_run_dir(run: RunDir) -> None:
    """Main rank, after the exports of a completed schedule: drop the checkpoints (see above)."""
    shutil.rmtree(run.ckpt_dir, ignore_errors=True)


@contextmanager
def run_lock(stage: str, run: RunDir) -> Iterator[None]:
    """Hold the run directory and the checkpoint directory for the block (main rank); another job
    on either is refused with `OutputLocked` naming its owner."""
    what = f"dinoflow {stage} (out_dir {run.out})"
    with ExitStack() as locks:
        locks.enter_context(
            writer_lock(run.out / LOCK, what, f"run directory {run.out}", f"choose another {stage}.out_dir")
        )
        locks.enter_context(
            writer_lock(
                run.ckpt_dir.with_name(run.ckpt_dir.name + ".lock"),
                what,
                f"checkpoint directory {run.ckpt_dir}",
                f"give this run its own {stage}.train.checkpoint_dir",
            )
        )
        yield
