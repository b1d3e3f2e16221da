"""THE training loop, shared by pretraining and distillation (they differ only in the objective).

    env → objective → wrap (DDP / FSDP2) → optimiser → resume → for step: data → views →
    schedules → loss → backward → clip → step → EMA → metrics / CSV / checkpoint → export

Checkpoints every `checkpoint_every` steps, on SIGTERM/SIGINT (spot nodes get SIGTERM before
preemption; see `preemption.py`) and at the end; a stop before the end raises `Preempted`, so the
stage exits non-zero and a rerun resumes. Where checkpoints live and when a run directory may be
resumed: `run_dir.py`. A non-finite loss stops the job with a clear error and leaves the last good
checkpoint in place.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch
from torch import nn

from dinoflow import tracking
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_text
from dinoflow.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dinoflow.train.data import check_training_data, make_loader
from dinoflow.train.distributed import DistEnv, all_reduce_sum, barrier, init_distributed, shard_like, wrap_model
from dinoflow.train.objectives import step_seed, unwrap
from dinoflow.train.optim import apply_schedules, build_optimizer, param_groups
from dinoflow.train.preemption import Preempted, StopRequested, StopSignal
from dinoflow.train.resources import check_batch_fits
from dinoflow.train.run_dir import check_checkpoint_settings, check_run_dir, finish_run_dir, start_run_dir
from dinoflow.train.schedules import Schedules

METRICS_COPY = "metrics.csv"  # the metrics CSV as of a checkpoint, kept inside it


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA only: this class of CPU has no fast bf16."""
    use_bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    if precision == "bf16" and device.type != "cuda":
        raise DinoflowError("train.precision bf16 needs a CUDA device; CPU runs fp32 (set precision: auto)")
    return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else torch.autocast("cpu", enabled=False)


def clip_gradients(net: nn.Module, max_norm: float | None) -> dict[str, float]:
    """Clip each submodule (backbone, heads) separately, as the recipe does."""
    norms: dict[str, float] = {}
    if max_norm is None:
        return norms
    for name, mod in unwrap(net).param_modules().items():
        params = [p for p in mod.parameters() if p.grad is not None]
        if params:
            n = torch.nn.utils.clip_grad_norm_(params, max_norm)
            norms[f"grad_norm_{name}"] = float(n.full_tensor() if hasattr(n, "full_tensor") else n)
    return norms


def train_step(objective, net: nn.Module, optimizer: torch.optim.Optimizer, views: dict[str, Any],
               s: dict[str, float], *, clip_grad: float | None, precision: str = "auto",
               device: torch.device = torch.device("cpu")) -> tuple[float, dict[str, float]]:
    """One optimiser step on prepared views. Returns (global mean loss, metrics)."""
    apply_schedules(optimizer, lr=s["lr"], wd=s["wd"], last_layer_lr=s["last_layer_lr"])
    with autocast_context(device, precision):
        loss, metrics = objective.loss(net, views, s)
    # every rank must agree on stopping: reduce the loss before anything acts on it
    red = all_reduce_sum(torch.stack([loss.detach().float(), torch.ones((), device=loss.device)]))
    mean_loss = float(red[0] / red[1])
    if not math.isfinite(mean_loss):
        raise DinoflowError(f"the loss became {mean_loss} (terms: {metrics}); stopping. The last good checkpoint "
                            "is kept: lower optim.base_lr, check the data, or raise optim.warmup_epochs, then resume")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    metrics.update(clip_gradients(net, clip_grad))
    optimizer.step()
    objective.after_step(net, s)
    return mean_loss, metrics


class CsvLog:
    """Per-step metrics for `dvc plots`, appended at each flush (never rewritten: a long run would
    otherwise rewrite the whole file every few steps). On resume the file is cut back once,
    atomically, to the rows of steps the checkpoint covers — which also drops a row a kill left
    half-written — so no step appears twice. Each checkpoint keeps a copy (`saved`), which
    restores the rows when the file itself is gone (DVC deletes it before rerunning a stage)."""

    def __init__(self, path: str | Path, start_step: int, saved: Path | None = None):
        self.path = Path(path)
        self.pending: list[dict[str, Any]] = []
        self.fields: list[str] | None = None
        kept: list[dict[str, Any]] = []
        src = saved if saved is not None and saved.is_file() else self.path
        if start_step > 0 and src.exists():
            with src.open() as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or []) or None
                kept = [r for r in reader if r.get("step", "").isdigit() and None not in r.values()
                        and int(r["step"]) <= start_step]
        if self.fields is None or not kept:
            self.fields = None
            if self.path.exists():
                self.path.unlink()
        else:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.fields)
            w.writeheader()
            w.writerows(kept)
            atomic_write_text(self.path, buf.getvalue())

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)

    def flush(self) -> None:
        if not self.pending:
            return
        new_file = self.fields is None
        if new_file:  # the first row fixes the columns; every step logs the same keys
            self.fields = list(self.pending[0])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new_file:
                w.writeheader()
            w.writerows(self.pending)
        self.pending = []


def run_training(make_objective: Callable[[torch.device], Any], *, stage: str, cfg, section) -> dict[str, Any]:
    """Train with the objective `make_objective(device)` builds; export when finished.

    `cfg` is the whole Config (tracking); `section` the stage's section (pretrain / distill),
    which carries train, optim, loss, crops, data, out_dir, report_csv and seed.
    """
    with tracking.stage_run(stage, cfg):
        return _run(make_objective, stage, section)


def _run(make_objective, stage: str, sec) -> dict[str, Any]:
    with StopRequested(distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1) as stop:
        try:
            return _train(make_objective, stage, sec, stop)
        except StopSignal:  # during setup: nothing to save yet
            raise Preempted(f"{stage} stopped by {stop.signame} before training started; rerun the same "
                            "command to start (or resume from its last checkpoint)") from None


def _prepare(stage: str, sec, env: DistEnv, run) -> list:
    """Up-front checks (batch vs memory, data decodes), then record the run; returns the data units."""
    tcfg = sec.train
    model_cfg = sec.model if hasattr(sec, "model") else sec.student  # pretrain / distill: the model trained
    check_batch_fits(f"{stage}.train.batch_size_per_rank", tcfg.batch_size_per_rank, model_cfg, sec.crops,
                     tcfg.load_size or sec.crops.global_size, env.device)
    units = check_training_data(sec.data, f"{stage}.data")
    if env.is_main:
        start_run_dir(stage, sec, run)
    barrier()
    return units


def _train(make_objective, stage: str, sec, stop: StopRequested) -> dict[str, Any]:
    tcfg, seed = sec.train, sec.seed
    run = check_run_dir(stage, sec)  # every rank, before any work: refuses changed settings
    env: DistEnv = init_distributed(tcfg.device)
    units = _prepare(stage, sec, env, run)
    out, ckpt_dir = run.out, run.ckpt_dir
    objective = make_objective(env.device)
    net = wrap_model(objective.train_module(), tcfg.strategy, env)
    for m in objective.checkpoint_modules().values():
        shard_like(m, tcfg.strategy, env)
    if tcfg.compile:
        net = torch.compile(net)
    base = unwrap(net)
    groups = param_groups(base.param_modules(), sec.optim, {"backbone": base.backbone.n_blocks})
    optimizer = build_optimizer(groups, sec.optim)
    sched = Schedules(optim=sec.optim, loss=sec.loss, epoch_length=tcfg.epoch_length, epochs=tcfg.epochs,
                      total_batch=tcfg.batch_size_per_rank * env.world_size)
    modules = {"student": net, **objective.checkpoint_modules()}
    latest, start, skipped_total, last_loss = _resume(stage, sec, run, modules, net, optimizer, objective)
    end = sched.total_steps if tcfg.max_steps is None else min(sched.total_steps, tcfg.max_steps)
    loader = make_loader(sec.data, load_size=tcfg.load_size or sec.crops.global_size, seed=seed, rank=env.rank, world_size=env.world_size,
                         batch_size=tcfg.batch_size_per_rank, num_workers=tcfg.num_workers, skip_batches=start, units=units)
    log = CsvLog(sec.report_csv, start, saved=latest / METRICS_COPY if latest is not None else None)
    meta_common = {"stage": stage, "world_size": env.world_size, "config": sec.model_dump(mode="json")}
    bar = None
    if env.is_main and tcfg.progress and end > start:
        from tqdm import tqdm

        bar = tqdm(total=end, initial=start, desc=stage, unit="step", dynamic_ncols=True)

    def save(at: int) -> None:
        if env.is_main:
            log.flush()
        save_checkpoint(ckpt_dir, at, modules=modules, train_module=net, optimizer=optimizer,
                        extra=objective.extra_state(), is_main=env.is_main, files={METRICS_COPY: sec.report_csv},
                        meta={**meta_common, "skipped_images": skipped_total, "loss": last_loss})

    def stop_between_steps() -> NoReturn:  # the state is that of `step`, consistent with the data position
        nonlocal saved
        if not env.distributed and step > saved:  # several ranks could not agree on a collective save here
            with stop.deferred():
                save(step)
                saved = step
        raise Preempted(_stopped(stage, stop.signame, step, end, ckpt_dir, saved))

    with stop.deferred():  # a signal waits for the end of the step (and its checkpoint) ...
        step = saved = start
        t_last = time.perf_counter()
        while step < end:
            try:
                with stop.immediate():  # ... except while waiting for a batch: nothing is lost there
                    batch = next(loader)
            except StopSignal:
                stop_between_steps()
            skipped_total += int(batch["skipped"].sum())
            images = batch["image"].to(env.device, non_blocking=True)
            torch.manual_seed(step_seed(seed, step, env.rank) + 1)  # stochastic depth and friends
            views = objective.views(images, step, env.rank)
            s = sched.at(step)
            last_loss, metrics = train_step(objective, net, optimizer, views, s, clip_grad=sec.optim.clip_grad,
                                            precision=tcfg.precision, device=env.device)
            step += 1
            now = time.perf_counter()
            ips = tcfg.batch_size_per_rank * env.world_size / max(now - t_last, 1e-9)
            t_last = now
            row = {"step": step, "epoch": round(step / tcfg.epoch_length, 4), "loss": last_loss, **metrics,
                   **{k: v for k, v in s.items()}, "images_per_s": round(ips, 2), "skipped_images": skipped_total}
            if env.is_main:
                log.add(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{ips:.0f}")
                if step % tcfg.log_every == 0 or step == end:
                    tracking.log_metrics({k: float(v) for k, v in row.items() if k != "step"}, step=step)
                    log.flush()
            stop_now = _agree(stop.flag, env.device)
            if step % tcfg.checkpoint_every == 0 or step == end or stop_now:
                save(step)
                saved = step
            if stop_now:
                raise Preempted(_stopped(stage, stop.signame, step, end, ckpt_dir, saved))
        if bar is not None:
            bar.close()
        if env.is_main:
            log.flush()
        objective.export(out, is_main=env.is_main)  # collective under FSDP
        if env.is_main:
            tracking.log_artifact(sec.report_csv)
            if end == sched.total_steps:
                finish_run_dir(run)
    return {"stage": stage, "status": "finished", "step": step, "total_steps": end, "final_loss": last_loss,
            "resumed_from": start, "skipped_images": skipped_total, "world_size": env.world_size,
            "out_dir": str(out), "checkpoint_dir": str(ckpt_dir)}


def _resume(stage: str, sec, run, modules, net, optimizer, objective) -> tuple[Path | None, int, int, float]:
    """Load the run's latest checkpoint if there is one: (its path, step, skipped images, loss)."""
    latest = latest_checkpoint(run.ckpt_dir)
    if latest is None:
        return None, 0, 0, float("nan")
    check_checkpoint_settings(stage, sec, latest, run)
    meta = load_checkpoint(latest, modules=modules, train_module=net, optimizer=optimizer, extra=objective.extra_state())
    return latest, int(meta["step"]), int(meta.get("skipped_images", 0)), float(meta.get("loss", "nan"))


def _stopped(stage: str, signame: str, step: int, end: int, ckpt_dir: Path, saved: int) -> str:
    if saved == 0:
        kept = "no checkpoint was written yet: a rerun starts from step 0"
    elif saved == step:
        kept = f"its checkpoint {ckpt_dir / f'step_{step:08d}'} is kept: rerun the same command to resume"
    else:
        kept = f"rerun the same command to resume from the last checkpoint (step {saved}) in {ckpt_dir}"
    return f"{stage} stopped by {signame} at step {step} of {end} before it finished; {kept}"


def _agree(flag: bool, device: torch.device) -> bool:
    """Any rank asked to stop → all stop at the same step."""
    t = all_reduce_sum(torch.tensor([1.0 if flag else 0.0], device=device))
    return bool(t.item() > 0)
