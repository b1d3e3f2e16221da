"""The pipeline's stages: one record each, with the library function that runs it,
`run(cfg: Config) -> dict` (a JSON-able summary).

The CLI, DVC, the Kubeflow components and torchx are thin shells over this table. A runner whose
stage module imports torch or MLflow imports it when called, so `dinoflow --help` stays fast and a
stage pulls in only what it needs (pretrain and distill import their heavy parts themselves). What
the configuration says about a stage (its section, what it reads) is in `dinoflow.config.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dinoflow.config import Config
from dinoflow.config.stages import PIPELINE_ORDER, SECTIONS
from dinoflow.train.distill import distill
from dinoflow.train.pretrain import pretrain

Summary = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """A stage: its name (CLI command, DVC stage, KFP component) and the function that runs it."""

    name: str
    run: Callable[[Config], Summary]

    @property
    def section(self) -> str:
        """The config section holding this stage's parameters."""
        return SECTIONS[self.name]


def _demo_data(cfg: Config) -> Summary:
    from dinoflow.demo.pool import build_demo

    return build_demo(cfg)


def _curate(cfg: Config) -> Summary:
    from dinoflow.curation.pipeline import curate

    return curate(cfg)


def _evaluate(cfg: Config) -> Summary:
    from dinoflow.evaluation.run import evaluate

    return evaluate(cfg)


def _register(cfg: Config) -> Summary:
    from dinoflow.registry import register

    return register(cfg)


# in pipeline order (`dinoflow.config.stages.PIPELINE_ORDER`; a test holds the two together)
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("demo-data", _demo_data),
        Stage("curate", _curate),
        Stage("pretrain", pretrain),
        Stage("distill", distill),
        Stage("evaluate", _evaluate),
        Stage("register", _register),
    )
}


def get_stage(name: str) -> Stage:
    """The stage called `name`; a KeyError listing the stages otherwise."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]


def run_stage(name: str, cfg: Config) -> Summary:
    """Run stage `name` under `cfg` in this process; its summary."""
    return get_stage(name).run(cfg)


__all__ = ["PIPELINE_ORDER", "STAGES", "Stage", "get_stage", "run_stage"]
