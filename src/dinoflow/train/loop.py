"""THE training loop, shared by pretraining and distillation (they differ only in the objective).

    env → objective → wrap (DDP / FSDP2) → optimiser → resume → for step: data → views →
    schedules → loss → backward → clip → step → EMA → metrics / CSV / checkpoint → export

Checkpoints every `checkpoint_every` steps, on SIGTERM/SIGINT (spot nodes get SIGTERM before
preemption) and at the end. A non-finite loss stops the job with a clear error and leaves the
last good checkpoint in place.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dinoflow import tracking
from dinoflow.config import TrainConfig, dump_config
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_text
from dinoflow.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dinoflow.train.data import make_loader
from dinoflow.train.distributed import DistEnv, all_reduce_sum, init_distributed, shard_like, wrap_model
from dinoflow.train.objectives import step_seed, unwrap
from dinoflow.train.optim import apply_schedules, build_optimizer, param_groups
from dinoflow.train.schedules import Schedules


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
    half-written — so no step appears twice."""

    def __init__(self, path: str | Path, start_step: int):
        self.path = Path(path)
        self.pending: list[dict[str, Any]] = []
        self.fields: list[str] | None = None
        kept: list[dict[str, Any]] = []
        if start_step > 0 and self.path.exists():
            with self.path.open() as f:
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
    tcfg, seed = sec.train, sec.seed
    env: DistEnv = init_distributed(tcfg.device)
    out = Path(sec.out_dir)
    ckpt_dir = out / "ckpt"
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
    start = 0
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        meta = load_checkpoint(latest, modules=modules, train_module=net, optimizer=optimizer,
                               extra=objective.extra_state())
        start = int(meta["step"])
    end = sched.total_steps if tcfg.max_steps is None else min(sched.total_steps, tcfg.max_steps)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "train_config.yaml", dump_config(sec))
    loader = make_loader(sec.data, load_size=tcfg.load_size or sec.crops.global_size, seed=seed, rank=env.rank, world_size=env.world_size,
                         batch_size=tcfg.batch_size_per_rank, num_workers=tcfg.num_workers, skip_batches=start)
    log = CsvLog(sec.report_csv, start)
    meta_common = {"stage": stage, "world_size": env.world_size, "config": sec.model_dump(mode="json")}
    skipped_total, last_loss, status = 0, float("nan"), "finished"
    bar = None
    if env.is_main and tcfg.progress and end > start:
        from tqdm import tqdm

        bar = tqdm(total=end, initial=start, desc=stage, unit="step", dynamic_ncols=True)
    with StopRequested() as stop:
        step = start
        t_last = time.perf_counter()
        while step < end:
            batch = next(loader)
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
                save_checkpoint(ckpt_dir, step, modules=modules, train_module=net, optimizer=optimizer,
                                extra=objective.extra_state(), meta={**meta_common, "skipped_images": skipped_total},
                                is_main=env.is_main)
            if stop_now:
                status = "preempted"
                break
        if bar is not None:
            bar.close()
        if env.is_main:
            log.flush()
        if status == "finished":
            objective.export(out, is_main=env.is_main)  # collective under FSDP
            if env.is_main:
                tracking.log_artifact(sec.report_csv)
    return {"stage": stage, "status": status, "step": step, "total_steps": end, "final_loss": last_loss,
            "skipped_images": skipped_total, "world_size": env.world_size, "out_dir": str(out)}


def _agree(flag: bool, device: torch.device) -> bool:
    """Any rank asked to stop → all stop at the same step."""
    t = all_reduce_sum(torch.tensor([1.0 if flag else 0.0], device=device))
    return bool(t.item() > 0)
