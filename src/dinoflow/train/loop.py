"""THE training loop, shared by pretraining and distillation (they differ only in the objective).

    env → objective → wrap (DDP / FSDP2) → optimiser → resume → for step: data → views →
    schedules → loss → backward → clip → step → EMA → metrics / CSV / checkpoint → export

Checkpoints every `checkpoint_every` steps, on SIGTERM/SIGINT (spot nodes get SIGTERM before
preemption) and at the end; they are written in the background (`train.async_checkpoint`) and
published when complete. Metrics stay on the device and are read every `log_every` steps and
before every checkpoint: a non-finite loss stops the job with a clear error naming its step,
and no checkpoint is ever written after it, so the last good one stays in place.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

import torch

from dinoflow import tracking
from dinoflow.config import dump_config
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_text
from dinoflow.train.checkpoint import PendingSave, latest_checkpoint, load_checkpoint, start_save
from dinoflow.train.data import make_loader, resolve_workers
from dinoflow.train.distributed import DistEnv, any_rank, init_distributed
from dinoflow.train.metrics import CsvLog, StepMetrics
from dinoflow.train.objectives import step_seed
from dinoflow.train.optim import build_optimizer, param_groups
from dinoflow.train.schedules import Schedules
from dinoflow.train.step import autocast_context, clip_gradients, prepare_networks, train_step, unwrap

__all__ = ["CsvLog", "StopRequested", "autocast_context", "clip_gradients", "run_training", "train_step"]


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop checkpoints at the end of the current step and returns."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_training(make_objective: Callable[[Any], Any], *, stage: str, cfg, section) -> dict[str, Any]:
    """Train with the objective `make_objective(device)` builds; export when finished.

    `cfg` is the whole Config (tracking); `section` the stage's section (pretrain / distill),
    which carries train, optim, loss, crops, data, out_dir, report_csv and seed.
    """
    with tracking.stage_run(stage, cfg):
        return _run(make_objective, stage, section)


class _Checkpoints:
    """At most one save in flight; a new one (or the end) first publishes the previous one."""

    def __init__(self, ckpt_dir: Path, objective, modules: dict, net, optimizer, env: DistEnv, meta: dict, asynchronous: bool):
        self.ckpt_dir, self.objective, self.modules, self.net, self.optimizer = ckpt_dir, objective, modules, net, optimizer
        self.env, self.meta, self.asynchronous = env, meta, asynchronous
        self.pending: PendingSave | None = None

    def save(self, step: int, extra_meta: dict, wait: bool) -> None:
        self.finish()
        self.pending = start_save(self.ckpt_dir, step, modules=self.modules, train_module=self.net, optimizer=self.optimizer,
                                  extra=self.objective.extra_state(), meta={**self.meta, **extra_meta},
                                  is_main=self.env.is_main, asynchronous=self.asynchronous and not wait)
        if wait:
            self.finish()

    def finish(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.finish()


def _setup(make_objective, stage: str, sec, env: DistEnv):
    """Objective, wrapped networks, optimiser, schedules, and the state of a resumed run."""
    tcfg = sec.train
    objective = make_objective(env.device)
    net = prepare_networks(objective, tcfg, env)
    base = unwrap(net)
    groups = param_groups(base.param_modules(), sec.optim, {"backbone": base.backbone.n_blocks})
    optimizer = build_optimizer(groups, sec.optim)
    sched = Schedules(optim=sec.optim, loss=sec.loss, epoch_length=tcfg.epoch_length, epochs=tcfg.epochs,
                      total_batch=tcfg.batch_size_per_rank * env.world_size)
    modules = {"student": net, **objective.checkpoint_modules()}
    start, skipped = 0, 0
    latest = latest_checkpoint(Path(sec.out_dir) / "ckpt")
    if latest is not None:
        meta = load_checkpoint(latest, modules=modules, train_module=net, optimizer=optimizer,
                               extra=objective.extra_state())
        start, skipped = int(meta["step"]), int(meta.get("skipped_images", 0))
    return objective, net, optimizer, sched, modules, start, skipped


def _run(make_objective, stage: str, sec) -> dict[str, Any]:
    tcfg, seed = sec.train, sec.seed
    env: DistEnv = init_distributed(tcfg.device)
    out = Path(sec.out_dir)
    objective, net, optimizer, sched, modules, start, skipped = _setup(make_objective, stage, sec, env)
    end = sched.total_steps if tcfg.max_steps is None else min(sched.total_steps, tcfg.max_steps)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "train_config.yaml", dump_config(sec))
    views = objective.views.bind(env.rank, crops_on_host=env.device.type == "cpu")
    loader = make_loader(sec.data, load_size=tcfg.load_size or sec.crops.global_size, seed=seed, rank=env.rank,
                         world_size=env.world_size, batch_size=tcfg.batch_size_per_rank,
                         num_workers=resolve_workers(tcfg.num_workers, env.device, env.local_world_size),
                         skip_batches=start, prepare=views.prepare)
    log = CsvLog(sec.report_csv, start)
    ckpts = _Checkpoints(out / "ckpt", objective, modules, net, optimizer, env,
                         {"stage": stage, "world_size": env.world_size, "config": sec.model_dump(mode="json")},
                         tcfg.async_checkpoint)
    metrics = StepMetrics(tcfg.batch_size_per_rank * env.world_size, tcfg.epoch_length)
    metrics.skipped_total = skipped
    last_loss, status, step = float("nan"), "finished", start
    bar = None
    if env.is_main and tcfg.progress and end > start:
        from tqdm import tqdm

        bar = tqdm(total=end, initial=start, desc=stage, unit="step", dynamic_ncols=True)
    with StopRequested() as stop:
        while step < end:
            batch = next(loader)
            if batch["step"] != step:
                raise DinoflowError(f"the data loader delivered the batch of step {batch['step']} at step {step}")
            views_t = views.finish(batch["prepared"], step, env.device)
            torch.manual_seed(step_seed(seed, step, env.rank) + 1)  # stochastic depth and friends
            s = sched.at(step)
            loss, terms = train_step(objective, net, optimizer, views_t, s, clip_grad=sec.optim.clip_grad,
                                     precision=tcfg.precision, device=env.device)
            step += 1
            metrics.add(step, loss, terms, s, batch["skipped"])
            if bar is not None:
                bar.update(1)
            stop_now = any_rank(stop.flag)
            checkpoint_now = step % tcfg.checkpoint_every == 0 or step == end or stop_now
            if step % tcfg.log_every == 0 or checkpoint_now:
                last_loss = _publish(metrics.read(), log, bar, env, tcfg.log_every, end, last_loss)
            if checkpoint_now:
                ckpts.save(step, {"skipped_images": metrics.skipped_total}, wait=stop_now or step == end)
            if stop_now:
                status = "preempted"
                break
        ckpts.finish()
        if bar is not None:
            bar.close()
        if status == "finished":
            objective.export(out, is_main=env.is_main)  # collective under FSDP
            if env.is_main:
                tracking.log_artifact(sec.report_csv)
    return {"stage": stage, "status": status, "step": step, "total_steps": end, "final_loss": last_loss,
            "skipped_images": metrics.skipped_total, "world_size": env.world_size, "out_dir": str(out)}


def _publish(rows: list[dict[str, Any]], log: CsvLog, bar, env: DistEnv, log_every: int, end: int, last_loss: float) -> float:
    """Rows read from the device → CSV, MLflow (every log_every-th step and the last), progress bar."""
    if not rows:
        return last_loss
    if env.is_main:
        for row in rows:
            log.add(row)
            if row["step"] % log_every == 0 or row["step"] == end:
                tracking.log_metrics({k: float(v) for k, v in row.items() if k != "step"}, step=row["step"])
        log.flush()
        if bar is not None:
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", img_s=f"{rows[-1]['images_per_s']:.0f}")
    return rows[-1]["loss"]
