"""MLflow tracking for every stage (rank 0 only).

Interface used by the stages (keep it stable):
    with stage_run("pretrain", cfg) as run:   # run is None when tracking is off or off rank 0
        log_metrics({"loss": 1.0}, step=3)
        log_artifact("reports/pretrain.csv")

This is the no-op baseline; the MLflow issue fills it in behind the same names.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def stage_run(stage: str, cfg: Any, params: dict[str, Any] | None = None) -> Iterator[Any]:
    yield None


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    return None


def log_params(params: dict[str, Any]) -> None:
    return None


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    return None
