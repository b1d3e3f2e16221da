"""What the configuration says about each stage: its name and place in the pipeline, the section
holding its parameters, and what it reads.

Torch-free and free of the stages' code, so tracking (a run's params and inputs), the launchers
and the pipeline compiler can ask without importing a stage. The stages themselves, one record
each, are in `dinoflow.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dinoflow.config.root import Config
from dinoflow.config.secrets import flatten

# the stages in pipeline order: CLI commands, DVC stages and KFP components carry these names
PIPELINE_ORDER: tuple[str, ...] = ("demo-data", "curate", "pretrain", "distill", "evaluate", "register")

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
