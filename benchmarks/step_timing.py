"""The timing loop the distillation benchmarks share: an objective's real training step, timed.

Imports only what every recent commit has (the objective protocol, the optimiser builder and
`train_step`), so `distill_step.py --against` can run it against an older tree's package.
"""

from __future__ import annotations

import statistics
import time

import torch

from dinoflow.train.objective import backbones_of
from dinoflow.train.optim import build_optimizer, param_groups
from dinoflow.train.step import train_step

# a mid-training schedule point; the step's cost does not depend on these values
SCHEDULE = {"lr": 1e-3, "wd": 0.04, "last_layer_lr": 1e-3, "teacher_temp": 0.05, "momentum": 0.99}


def median_step_seconds(
    obj, optim_cfg, images: torch.Tensor, steps: int, warmup: int = 1, fixed_crops: bool = False
) -> float:
    """Median seconds of `steps` CPU training steps of `obj` on uint8 `images` [B,3,H,W], after
    `warmup` untimed ones. Each step makes its views (the augmentation, as a CPU run does in the
    loop's process) unless `fixed_crops`, which reuses one set of views: the network part alone."""
    device = torch.device("cpu")
    net = obj.train_module()
    depth = {k: b.n_blocks for k, b in backbones_of(net).items()}
    opt = build_optimizer(param_groups(net.param_modules(), optim_cfg, depth), optim_cfg)
    fixed = obj.views(images, 0, 0) if fixed_crops else None
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        v = fixed if fixed is not None else obj.views(images, step, 0)
        train_step(obj, net, opt, v, SCHEDULE, clip_grad=3.0, device=device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])
