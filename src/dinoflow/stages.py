"""The pipeline's stages: one library function each, `fn(cfg: Config) -> dict` (a JSON-able summary).

The CLI, DVC, the Kubeflow components and torchx are thin shells over this table.
Imports are lazy so `dinoflow --help` stays fast and a stage pulls in only what it needs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from dinoflow.config import Config
from dinoflow.redaction import flatten

# stage name → "module:function"
STAGES: dict[str, str] = {
    "demo-data": "dinoflow.data.demo:build_demo",
    "curate": "dinoflow.curation.pipeline:curate",
    "pretrain": "dinoflow.train.pretrain:pretrain",
    "distill": "dinoflow.train.distill:distill",
    "evaluate": "dinoflow.evaluation.run:evaluate",
    "register": "dinoflow.registry:register",
}

PIPELINE_ORDER = ["demo-data", "curate", "pretrain", "distill", "evaluate", "register"]

# stage → the config section holding its parameters (what its MLflow run logs as params)
SECTIONS: dict[str, str] = {
    "demo-data": "demo",
    "curate": "curate",
    "pretrain": "pretrain",
    "distill": "distill",
    "evaluate": "evaluate",
    "register": "register",
}


@dataclass(frozen=True)
class StageInput:
    """One thing a stage reads: a local path or a URI, and what it is."""

    path: str
    kind: Literal["data", "model", "report"]


def _data(*paths: str | None) -> list[StageInput]:
    return [StageInput(p, "data") for p in paths if p]


def stage_inputs(name: str, cfg: Config) -> list[StageInput]:
    """What `name` reads under `cfg` (recorded with its run: hashes, dataset references)."""
    if name == "curate":
        c = cfg.curate
        return _data(*c.sources, c.seeds, *c.eval_sets)
    if name == "pretrain":
        return _data(cfg.pretrain.data)
    if name == "distill":
        return [*_data(cfg.distill.data), StageInput(cfg.distill.teacher, "model")]
    if name == "evaluate":
        e = cfg.evaluate
        demo = any(d.kind.startswith("demo_") for d in e.datasets)
        return [
            *(StageInput(m, "model") for m in e.models.values()),
            *_data(*(p for d in e.datasets for p in (d.train, d.test)), e.demo_dir if demo else None),
        ]
    if name == "register":
        return [StageInput(cfg.register.eval_report, "report"), StageInput(cfg.register.model_path, "model")]
    return []


def section_params(name: str, cfg: Config) -> dict[str, Any]:
    """The stage's config section as flat MLflow params (secrets dropped), plus the global seed."""
    section = getattr(cfg, SECTIONS.get(name, name.replace("-", "_")), None)
    if section is None:
        return {}
    params = flatten(section.model_dump(mode="json"))
    params.setdefault("seed", cfg.seed)
    return params


def get_stage(name: str) -> Callable[[Config], dict[str, Any]]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)


def run_stage(name: str, cfg: Config) -> dict[str, Any]:
    return get_stage(name)(cfg)
