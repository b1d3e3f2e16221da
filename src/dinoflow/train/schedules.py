"""Recipe schedules as pure functions of the optimiser step.

Being pure functions of the step (not stateful schedulers) is what makes resume exact: a job
restarted at step s recomputes the same values an uninterrupted job had at step s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dinoflow.config import LossConfig, OptimConfig


def cosine_warmup(
    step: int, *, base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0
) -> float:
    """Value at `step` of a linear warmup from `warmup_start` to `base` over `warmup` steps, then
    a cosine from `base` to `final` until `total`; `final` afterwards.

    Matches the official CosineScheduler's array layout (warmup, then cosine) step for step.
    """
    if step < warmup:
        return warmup_start + (base - warmup_start) * step / warmup
    step -= warmup
    n_cos = total - warmup
    if n_cos <= 0 or step >= n_cos:
        return final
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / n_cos))


def scaled_lr(base_lr: float, total_batch: int, rule: str) -> float:
    """The recipe's LR scaling: base_lr is quoted for a total batch of 1024."""
    if rule == "sqrt":
        return base_lr * math.sqrt(total_batch / 1024.0)
    if rule == "linear":
        return base_lr * total_batch / 1024.0
    return base_lr


@dataclass(frozen=True)
class Schedules:
    """All per-step recipe values; `at(step)` is a pure function."""

    optim: OptimConfig
    loss: LossConfig
    epoch_length: int
    epochs: int
    total_batch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.epoch_length

    def _steps(self, epochs: float) -> int:
        return int(round(epochs * self.epoch_length))

    def at(self, step: int) -> dict[str, float]:
        o, lo = self.optim, self.loss
        total = self.total_steps
        peak = scaled_lr(o.base_lr, self.total_batch, o.lr_scaling)
        warm = self._steps(o.warmup_epochs)
        lr = cosine_warmup(step, base=peak, final=o.min_lr, total=total, warmup=warm)
        # As the official recipe: the main LR curve with its first epochs zeroed.
        last_layer_lr = 0.0 if step < self._steps(o.freeze_last_layer_epochs) else lr
        wd = cosine_warmup(step, base=o.weight_decay, final=o.weight_decay_end, total=total)
        momentum = cosine_warmup(step, base=o.momentum_teacher, final=o.final_momentum_teacher, total=total)
        t_warm = self._steps(lo.warmup_teacher_temp_epochs)
        teacher_temp = (
            lo.warmup_teacher_temp + (lo.teacher_temp - lo.warmup_teacher_temp) * step / t_warm
            if step < t_warm
            else lo.teacher_temp
        )
        return {"lr": lr, "last_layer_lr": last_layer_lr, "wd": wd, "momentum": momentum, "teacher_temp": teacher_temp}
