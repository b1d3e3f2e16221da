"""The seam between the one training loop and what it trains.

Pretraining (`pretrain_objective.PretrainObjective`) and distillation
(`distill_objectives.HeadDistillObjective`, `FeatureDistillObjective`) differ only in their
objective; `loop.run_training` and `step.py` call nothing else on it than `Objective` declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from dinoflow.train.views import Views

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer

Schedule = dict[str, float]  # this step's schedule values: lr, wd, momentum, teacher_temp, ...
Batch = dict[str, Any]  # the views of one step (`Views.finish`): crops [N,3,S,S], masks, ...


class TrainModule(Protocol):
    """What the loop calls on `Objective.train_module()` besides the nn.Module methods."""

    def param_modules(self) -> dict[str, nn.Module]: ...


class Objective(Protocol):
    """What the loop needs from a training objective. It owns the networks it builds.

    `train_module()` must return a module with `backbone` (a DinoVisionTransformer) and
    `param_modules()` (name → submodule, for the optimiser's groups and gradient clipping).
    """

    views: Views  # the crops (+ masks) of each step, deterministic in (seed, step, rank)

    def train_module(self) -> nn.Module:
        """The network the optimiser trains (the loop wraps it in DDP / FSDP2)."""
        ...

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """Networks besides the trained one that a checkpoint holds (the EMA copies), by name."""
        ...

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint holds and a resume loads in place (loss centres, EMA counters)."""
        ...

    def loss(self, net: nn.Module, views: Batch, s: Schedule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(0-d loss to backpropagate, its terms as detached 0-d device tensors) for one step;
        `net` is the wrapped `train_module()`."""
        ...

    def after_step(self, net: nn.Module, s: Schedule) -> None:
        """After the optimiser step: the EMA updates."""
        ...

    def export(self, out_dir: str | Path, is_main: bool = True) -> None:
        """Write the stage's outputs (backbone.pth, config.yaml, ...). Collective under FSDP."""
        ...


def backbones_of(module: nn.Module) -> dict[str, DinoVisionTransformer]:
    """The backbones a train module (or an EMA copy of one) trains, by their `param_modules()` name:
    `backbones()` where it holds several (a family of students), else {"backbone": module.backbone};
    {} for a module without one."""
    backbones = getattr(module, "backbones", None)
    if backbones is not None:
        return dict(backbones())
    backbone = getattr(module, "backbone", None)
    return {} if backbone is None else {"backbone": backbone}
