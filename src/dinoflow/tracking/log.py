"""Logging inside an open stage run; every function is a no-op when no stage run is open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinoflow.config.secrets import flatten, is_secret_key
from dinoflow.config.secrets import redact_urls as redact
from dinoflow.errors import DinoflowError
from dinoflow.tracking.current import CURRENT
from dinoflow.tracking.server import named_errors

PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics at `step`, asynchronously: training does not wait for the server."""
    current = CURRENT.get()
    if current is None:
        return
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if clean:
        with named_errors("logging metrics", current.uri):
            mlflow.log_metrics(clean, step=step, synchronous=False)


def log_params(params: dict[str, Any]) -> None:
    """Log params (flattened; secret-looking keys dropped, URL credentials redacted)."""
    current = CURRENT.get()
    if current is None or not params:
        return
    import mlflow

    flat = flatten(params)
    with named_errors("logging params", current.uri):
        mlflow.log_params(
            {
                k: v if v is None or isinstance(v, (int, float, bool)) else str(v)[:PARAM_VALUE_MAX]
                for k, v in flat.items()
            }
        )


def set_tags(tags: dict[str, Any]) -> None:
    current = CURRENT.get()
    if current is None:
        return
    import mlflow

    with named_errors("setting tags", current.uri):
        mlflow.set_tags({k: redact(str(v)) for k, v in tags.items() if not is_secret_key(k)})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file, or a directory's files, under `artifact_path`; a missing path is an error."""
    current = CURRENT.get()
    if current is None:
        return
    import mlflow

    p = Path(path)
    if not p.exists():
        raise DinoflowError(f"cannot log artifact {p}: it does not exist")
    with named_errors(f"logging artifact {p}", current.uri):
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path)
        else:
            mlflow.log_artifact(str(p), artifact_path)
