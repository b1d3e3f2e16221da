"""A pipeline step = the project config + the step's overrides + where its artifacts live.

The Kubeflow components call these helpers so that they hold no logic of their own: a component
only names which config keys its input and output artifacts fill (the *wiring*).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from dinoflow import tracking
from dinoflow.config import Config, ConfigError, config_from_text, pipeline_env
from dinoflow.config.stages import stage_inputs
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_path
from dinoflow.launch import shared
from dinoflow.stages import run_stage

# KFP's final task states → MLflow run states
_FINAL_STATES = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED", "CANCELING": "KILLED"}


def step_config(params_yaml: str, overrides: Sequence[str] = (), wiring: Mapping[str, Any] | None = None) -> Config:
    """Validated config from params text (empty → defaults), then user overrides, then artifact wiring.

    Wiring (config key → artifact path or value) is set on the tree as it is, after the overrides,
    so a user override cannot point a step at the wrong artifact and no path is re-read as YAML.
    Raises DinoflowError naming the bad key when the result does not validate.
    """
    try:
        return config_from_text(
            params_yaml or "{}", [str(o) for o in overrides], wiring, origin="the pipeline parameter params_yaml"
        )
    except ConfigError as e:
        raise DinoflowError(f"pipeline parameters do not give a valid config: {e}") from None


def check_pod_paths(stage: str, cfg: Config) -> None:
    """Inside a Kubeflow step pod, a relative input path points into the image's read-only working
    directory (/app), where no data is: refuse it before any work, naming the key's value. The
    shared volume every step mounts must be writable too (shared.is_mounted names the fix)."""
    if pipeline_env.kfp_pod() is None:
        return

    shared.is_mounted(shared.SHARED_DIR)
    relative = [i.path for i in stage_inputs(stage, cfg) if "://" not in i.path and not Path(i.path).is_absolute()]
    if relative:
        raise DinoflowError(
            f"stage {stage!r} in a Kubeflow step reads relative path(s) {relative}: inside the pod they point into "
            "the image's working directory, not your data. Give s3:// URIs or absolute paths on mounted volumes "
            "in the pipeline's params_yaml (see pipelines/params.cluster.example.yaml)."
        )


def run_step(
    stage: str, params_yaml: str, overrides: Sequence[str] = (), wiring: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build the step's config and run the stage function in this process; returns its summary."""
    cfg = step_config(params_yaml, overrides, wiring)
    check_pod_paths(stage, cfg)
    return run_stage(stage, cfg) or {}


def finish_pipeline(params_yaml: str, overrides: Sequence[str], *, state: str, run_name: str) -> str | None:
    """The exit handler's work: end this pipeline run's MLflow parent run with the KFP final state."""
    if run_name and not run_name.startswith("{{"):  # an unresolved placeholder is no name
        os.environ[pipeline_env.PIPELINE_RUN_NAME] = run_name
    status = _FINAL_STATES.get(str(state).upper(), "FAILED")
    parent = tracking.finish_pipeline_run(step_config(params_yaml, overrides), status)
    print(f"pipeline run {pipeline_env.pipeline_run_id()} ended {state}: MLflow parent run {parent} set to {status}")
    return parent


def publish(src: str | Path, dest: str | Path) -> None:
    """Copy a report the stage wrote into an output artifact's path (atomically)."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise DinoflowError(f"the stage did not write {src}; cannot publish it as a pipeline artifact")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def flat_metrics(tree: Any, prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested summary as `a.b.c → value` (for a KFP Metrics artifact)."""
    out: dict[str, float] = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(flat_metrics(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(flat_metrics(v, f"{prefix}{i}."))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        out[prefix.rstrip(".")] = float(tree)
    return out


def log_summary_metrics(metrics_artifact: Any, summary: Mapping[str, Any]) -> dict[str, float]:
    """Log every finite number of `summary` on a KFP `Metrics` artifact; returns what was logged."""
    flat = flat_metrics(summary)
    for name, value in flat.items():
        metrics_artifact.log_metric(name, value)
    return flat
