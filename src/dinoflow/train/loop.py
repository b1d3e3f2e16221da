"""THE training loop, shared by pretraining and distillation (they differ only in the objective).

    env → objective → wrap (DDP / FSDP2) → optimiser → resume → for step: data → views →
    schedules → loss → backward → clip → step → EMA → metrics / CSV / checkpoint → export

Checkpoints every `checkpoint_every` steps, on SIGTERM/SIGINT (spot nodes get SIGTERM before
preemption; see `preemption.py`) and at the end; they are written in the background
(`train.async_checkpoint`) and published when complete. A stop before the end raises `Preempted`,
so the stage exits non-zero and a rerun resumes. Where checkpoints live and when a run directory
may be resumed: `run_dir.py`. Metrics stay on the device and are read every `log_every` steps and
before every checkpoint: a non-finite loss stops the job with a clear error naming its step, and
no checkpoint is ever written after it, so the last good one stays in place.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, cast

import torch

from dinoflow import tracking
from dinoflow.config import Config, DistillConfig, ModelConfig, PretrainConfig, stage_seed
from dinoflow.distributed.env import DistEnv, any_rank, barrier, init_distributed
from dinoflow.errors import DinoflowError
from dinoflow.models.wrappers import unwrap
from dinoflow.train.checkpoint import PendingSave, latest_checkpoint, load_checkpoint, start_save
from dinoflow.train.data import check_training_data, make_loader, resolve_workers
from dinoflow.train.metrics import CsvLog, StepMetrics
from dinoflow.train.objective import Objective, TrainModule, backbones_of
from dinoflow.train.optim import build_optimizer, param_groups
from dinoflow.train.preemption import Preempted, StopRequested, StopSignal
from dinoflow.train.resources import check_batch_fits, check_model_fits, training_state_bytes
from dinoflow.train.run_dir import (
    RunDir,
    check_checkpoint_settings,
    check_run_dir,
    finish_run_dir,
    run_lock,
    start_run_dir,
)
from dinoflow.train.schedules import Schedules
from dinoflow.train.step import prepare_networks, train_step
from dinoflow.train.views import step_seed

METRICS_COPY = "metrics.csv"  # the metrics CSV as of a checkpoint, kept inside it


StageSection = PretrainConfig | DistillConfig  # the stage's section: train, optim, loss, crops, data, out_dir, ...
MakeObjective = Callable[[torch.device], Objective]


def run_training(make_objective: MakeObjective, *, stage: str, cfg: Config, section: StageSection) -> dict[str, Any]:
    """Train with the objective `make_objective(device)` builds; export when finished.

    `cfg` is the whole Config (tracking); `section` the stage's section (pretrain / distill),
    which carries train, optim, loss, crops, data, out_dir, report_csv and seed.
    """
    with tracking.stage_run(stage, cfg):
        return _run(make_objective, stage, section)


def _run(make_objective: MakeObjective, stage: str, sec: StageSection) -> dict[str, Any]:
    with StopRequested(distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1) as stop:
        try:
            with ExitStack() as locks:  # the run's locks, taken once its checks pass, held to the end
                return _train(make_objective, stage, sec, stop, locks)
        except StopSignal:  # during setup: nothing to save yet
            raise Preempted(
                f"{stage} stopped by {stop.signame} before training started; rerun the same "
                "command to start (or resume from its last checkpoint)"
            ) from None


class _Checkpoints:
    """At most one save in flight; a new one (or the end) first publishes the previous one."""

    def __init__(
        self,
        ckpt_dir: Path,
        objective: Objective,
        modules: dict[str, torch.nn.Module],
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        env: DistEnv,
        meta: dict,
        asynchronous: bool,
        files: dict[str, str],
    ):
        self.ckpt_dir, self.objective, self.modules, self.net, self.optimizer = (
            ckpt_dir,
            objective,
            modules,
            net,
            optimizer,
        )
        self.env, self.meta, self.asynchronous, self.files = env, meta, asynchronous, files
        self.pending: PendingSave | None = None
        self.saved = 0  # the step of the last checkpoint started

    def save(self, step: int, extra_meta: dict, wait: bool) -> None:
        self.finish()
        self.pending = start_save(
            self.ckpt_dir,
            step,
            modules=self.modules,
            train_module=self.net,
            optimizer=self.optimizer,
            extra=self.objective.extra_state(),
            meta={**self.meta, **extra_meta},
            is_main=self.env.is_main,
            files=self.files,
            asynchronous=self.asynchronous and not wait,
        )
        self.saved = step
        if wait:
            self.finish()

    def finish(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.finish()

    def poll(self) -> None:
        """Publish a background save as soon as every rank has written its part, so a kill after
        it loses nothing (collective while a save is pending: the ranks agree first)."""
        if self.pending is not None:
            future = self.pending.future
            if not any_rank(future is not None and not future.done()):
                self.finish()


def _prepare(stage: str, sec: StageSection, env: DistEnv, run: RunDir, locks: ExitStack) -> list:
    """Up-front checks (model and batch vs memory, data decodes), then take the run directory (one
    job at a time) and record the run; returns the data units."""
    tcfg = sec.train
    pretraining = isinstance(sec, PretrainConfig)
    trained: Sequence[ModelConfig]
    if isinstance(sec, PretrainConfig):
        trained, head = [sec.model], sec.head
    else:
        trained, head = sec.students or [sec.student], None  # a family trains them together
    state = sum(training_state_bytes(m, head, with_teacher_copy=pretraining) for m in trained)
    check_model_fits(stage, "model" if pretraining else "student", state, env.device, env.world_size)
    for model_cfg in trained:
        check_batch_fits(
            f"{stage}.train.batch_size_per_rank",
            tcfg.batch_size_per_rank,
            model_cfg,
            sec.crops,
            tcfg.load_size or sec.crops.global_size,
            env.device,
        )
    units = check_training_data(sec.data, f"{stage}.data")
    held: DinoflowError | None = None
    if env.is_main:  # the job's other ranks are its own writers
        try:
            locks.enter_context(run_lock(stage, run))
        except DinoflowError as e:
            held = e
    if any_rank(held is not None):
        raise held or DinoflowError(f"rank 0 could not take {run.out} (see its message): another job writes it")
    if env.is_main:
        start_run_dir(stage, sec, run)
    barrier()
    return units


def _setup(make_objective: MakeObjective, stage: str, sec: StageSection, env: DistEnv, run: RunDir):
    """Objective, wrapped networks, optimiser, schedules, and the state of a resumed run."""
    tcfg = sec.train
    objective = make_objective(env.device)
    net = prepare_networks(objective, tcfg, env)
    base = unwrap(net)
    groups = param_groups(
        cast(TrainModule, base).param_modules(), sec.optim, {n: b.n_blocks for n, b in backbones_of(base).items()}
    )
    optimizer = build_optimizer(groups, sec.optim)
    sched = Schedules(
        optim=sec.optim,
        loss=sec.loss,
        epoch_length=tcfg.epoch_length,
        epochs=tcfg.epochs,
        total_batch=tcfg.batch_size_per_rank * env.world_size,
    )
    modules = {"student": net, **objective.checkpoint_modules()}
    resumed = _resume(stage, sec, run, modules, net, optimizer, objective)
    return objective, net, optimizer, sched, modules, resumed


def _resume(
    stage: str,
    sec: StageSection,
    run: RunDir,
    modules: dict[str, torch.nn.Module],
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
) -> tuple[Path | None, int, int, float]:
    """Load the run's latest checkpoint if there is one: (its path, step, skipped images, loss)."""
    latest = latest_checkpoint(run.ckpt_dir)
    if latest is None:
        return None, 0, 0, float("nan")
    check_checkpoint_settings(stage, sec, latest, run)
    meta = load_checkpoint(
        latest, modules=modules, train_module=net, optimizer=optimizer, extra=objective.extra_state()
    )
    return latest, int(meta["step"]), int(meta.get("skipped_images", 0)), float(meta.get("loss", "nan"))


def _loader(sec: StageSection, env: DistEnv, views, start: int, units: list):
    """The stage's batches from step `start` on, views prepared in the loader's workers."""
    tcfg = sec.train
    return make_loader(
        sec.data,
        load_size=tcfg.load_size or sec.crops.global_size,
        seed=stage_seed(sec.seed),
        rank=env.rank,
        world_size=env.world_size,
        batch_size=tcfg.batch_size_per_rank,
        num_workers=resolve_workers(tcfg.num_workers, env.device, env.local_world_size),
        skip_batches=start,
        prepare=views.prepare,
        units=units,
    )


def _train(
    make_objective: MakeObjective, stage: str, sec: StageSection, stop: StopRequested, locks: ExitStack
) -> dict[str, Any]:
    tcfg, seed = sec.train, stage_seed(sec.seed)
    run = check_run_dir(stage, sec)  # every rank, before any work: refuses changed settings
    env: DistEnv = init_distributed(tcfg.device)
    units = _prepare(stage, sec, env, run, locks)
    objective, net, optimizer, sched, modules, (latest, start, skipped, last_loss) = _setup(
        make_objective, stage, sec, env, run
    )
    end = sched.total_steps if tcfg.max_steps is None else min(sched.total_steps, tcfg.max_steps)
    views = objective.views.bind(env.rank, crops_on_host=env.device.type == "cpu")
    loader = _loader(sec, env, views, start, units)
    log = CsvLog(sec.report_csv, start, saved=latest / METRICS_COPY if latest is not None else None)
    meta = {"stage": stage, "world_size": env.world_size, "config": sec.model_dump(mode="json")}
    ckpts = _Checkpoints(
        run.ckpt_dir,
        objective,
        modules,
        net,
        optimizer,
        env,
        meta,
        tcfg.async_checkpoint,
        {METRICS_COPY: sec.report_csv},
    )
    ckpts.saved = start
    metrics = StepMetrics(tcfg.batch_size_per_rank * env.world_size, tcfg.epoch_length)
    metrics.skipped_total = skipped
    bar = None
    if env.is_main and tcfg.progress and end > start:
        from tqdm import tqdm

        bar = tqdm(total=end, initial=start, desc=stage, unit="step", dynamic_ncols=True)
    step = start

    def save(wait: bool) -> None:
        nonlocal last_loss
        last_loss = _publish(metrics.read(), log, bar, env, tcfg.log_every, end, last_loss)
        ckpts.save(step, {"skipped_images": metrics.skipped_total, "loss": last_loss}, wait=wait)

    def stop_between_steps() -> NoReturn:  # the state is that of `step`, consistent with the data position
        if not env.distributed and step > ckpts.saved:  # several ranks could not agree on a collective save here
            with stop.deferred():
                save(wait=True)
        ckpts.finish()
        raise Preempted(_stopped(stage, stop.signame, step, end, run.ckpt_dir, ckpts.saved))

    with stop.deferred():  # a signal waits for the end of the step (and its checkpoint) ...
        while step < end:
            try:
                with stop.immediate():  # ... except while waiting for a batch: nothing is lost there
                    batch = next(loader)
            except StopSignal:
                stop_between_steps()
            if batch["step"] != step:
                raise DinoflowError(f"the data loader delivered the batch of step {batch['step']} at step {step}")
            views_t = views.finish(batch["prepared"], step, env.device)
            torch.manual_seed(step_seed(seed, step, env.rank) + 1)  # stochastic depth and friends
            s = sched.at(step)
            loss, terms = train_step(
                objective,
                net,
                optimizer,
                views_t,
                s,
                clip_grad=sec.optim.clip_grad,
                precision=tcfg.precision,
                device=env.device,
            )
            step += 1
            metrics.add(step, loss, terms, s, batch["skipped"])
            if bar is not None:
                bar.update(1)
            stop_now = any_rank(stop.flag)
            if step % tcfg.checkpoint_every == 0 or step == end or stop_now:
                save(wait=stop_now or step == end)
            else:
                ckpts.poll()
                if step % tcfg.log_every == 0:
                    last_loss = _publish(metrics.read(), log, bar, env, tcfg.log_every, end, last_loss)
            if stop_now:
                raise Preempted(_stopped(stage, stop.signame, step, end, run.ckpt_dir, ckpts.saved))
        ckpts.finish()
        if bar is not None:
            bar.close()
        objective.export(run.out, is_main=env.is_main)  # collective under FSDP
        if env.is_main:
            tracking.log_artifact(sec.report_csv)
            if end == sched.total_steps:
                finish_run_dir(run)
    return {"stage": stage, "status": "finished", "step": step, "total_steps": end, "final_loss": last_loss,
            "resumed_from": start, "skipped_images": metrics.skipped_total, "world_size": env.world_size,
            "out_dir": str(run.out), "checkpoint_dir": str(run.ckpt_dir)}  # fmt: skip


def _publish(
    rows: list[dict[str, Any]], log: CsvLog, bar, env: DistEnv, log_every: int, end: int, last_loss: float
) -> float:
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


def _stopped(stage: str, signame: str, step: int, end: int, ckpt_dir: Path, saved: int) -> str:
    if saved == 0:
        kept = "no checkpoint was written yet: a rerun starts from step 0"
    elif saved == step:
        kept = f"its checkpoint {ckpt_dir / f'step_{step:08d}'} is kept: rerun the same command to resume"
    else:
        kept = f"rerun the same command to resume from the last checkpoint (step {saved}) in {ckpt_dir}"
    return f"{stage} stopped by {signame} at step {step} of {end} before it finished; {kept}"
