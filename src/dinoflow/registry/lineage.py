"""Where a candidate comes from, read from MLflow: the run that trained it, the pipeline run, the
commit, and the current champion as its version tags recorded it.

The training run is found, in this order, as
1. the `distill` run of the same pipeline run whose `out_dir` is the model's folder (`dvc repro`,
   `dinoflow demo`, a Kubeflow run: every stage nests under one pipeline run);
2. the training run recorded on an earlier version of the same file (same sha256) — registering
   an unchanged student again, e.g. after changing only the gate's thresholds;
otherwise it is unknown, and the model's source run is the register run itself (said in the tags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinoflow.registry.gate import Champion
from dinoflow.tracking.parent import TAG_PIPELINE_RUN_ID

TAG_SHA256 = "dinoflow.model.sha256"
TAG_TRAINING_RUN = "dinoflow.training_run_id"
TRAINING_STAGE = "distill"


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _model_visible(client: Any, name: str) -> bool:
    """Whether registered model `name` exists for this client (search results are filtered by read permission)."""
    quote = '"' if "'" in name else "'"
    return any(m.name == name for m in client.search_registered_models(filter_string=f"name = {quote}{name}{quote}"))


def current_champion(client: Any, name: str, alias: str) -> Champion | None:
    """The alias holder of registered model `name`, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _not_found(e):
            return None
        # MLflow's basic-auth app (3.17) answers 403, not 404, for a model that does not exist yet:
        # its permission check finds no model to check against. The first registration on an
        # authenticated server must not fail on that; a model that exists but is unreadable still does.
        if getattr(e, "error_code", "") == "PERMISSION_DENIED" and not _model_visible(client, name):
            return None
        raise
    tags = mv.tags or {}
    try:
        knn: float | None = float(tags["gate.knn_top1"])
    except KeyError:
        knn = None
    except ValueError:  # unreadable: NaN, so that the gate names it instead of skipping the comparison
        knn = float("nan")
    return Champion(str(mv.version), knn, tags.get("gate.dataset"), tags.get("gate.eval_set"), tags.get(TAG_SHA256))


def _same_dir(a: str | None, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def training_run(client: Any, register_run: Any, model_file: Path, sha256: str, name: str) -> tuple[str | None, str]:
    """(run id of the run that trained `model_file`, how it was found) — (None, why) when unknown."""
    tags = register_run.data.tags
    parent = tags.get("mlflow.parentRunId")
    if parent:
        found = client.search_runs(
            [register_run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`dinoflow.stage` = '{TRAINING_STAGE}' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        for run in found:
            if _same_dir(run.data.params.get("out_dir"), model_file.parent):
                return run.info.run_id, f"the {TRAINING_STAGE} run of pipeline run {parent}"
    try:
        earlier = client.search_model_versions(f"name = '{name}' and tags.`{TAG_SHA256}` = '{sha256}'")
    except Exception as e:  # a registry without the model yet
        if not _not_found(e):
            raise
        earlier = []
    for mv in sorted(earlier, key=lambda v: int(v.version), reverse=True):
        run_id = (mv.tags or {}).get(TAG_TRAINING_RUN)
        if run_id and run_id != "unknown":
            return run_id, f"recorded on version {mv.version} (same sha256)"
    return None, f"no finished {TRAINING_STAGE} run of this pipeline run wrote {model_file.parent}"


def context_tags(register_run: Any) -> dict[str, str]:
    """Commit, MLflow parent run and pipeline-run id (the KFP run id under Kubeflow) of the register run,
    as version tags."""
    tags = register_run.data.tags
    out = {"dinoflow.register_run_id": register_run.info.run_id}
    for src, dst in (
        ("mlflow.source.git.commit", "dinoflow.git.commit"),
        ("dinoflow.git.dirty", "dinoflow.git.dirty"),
        ("mlflow.parentRunId", "dinoflow.parent_run_id"),
        (TAG_PIPELINE_RUN_ID, TAG_PIPELINE_RUN_ID),
    ):
        if tags.get(src):
            out[dst] = tags[src]
    return out
