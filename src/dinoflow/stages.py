"""The pipeline's stages: one library function each, `fn(cfg: Config) -> dict` (a JSON-able summary).

The CLI, DVC, the Kubeflow components and torchx are thin shells over this table.
Imports are lazy so `dinoflow --help` stays fast and a stage pulls in only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from dinoflow.config import Config

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


def get_stage(name: str) -> Callable[[Config], dict[str, Any]]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)


def run_stage(name: str, cfg: Config) -> dict[str, Any]:
    return get_stage(name)(cfg)
