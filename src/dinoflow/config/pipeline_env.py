"""Environment variables through which the shells (Kubeflow, torchrun, the demo driver, DVC) tell a
stage which pipeline run it belongs to. One definition of each name; readers go through the helpers.

On Kubeflow, every step pod carries the label `pipeline/runid` (the KFP launcher itself reads it);
the DAG copies it into `DINOFLOW_PIPELINE_RUN_ID` with the downward API, so the run id reaches the
step without being a component input (an input would enter the cache key and caching would never
hit). The same value is what `dsl.PIPELINE_JOB_ID_PLACEHOLDER` resolves to.
"""

from __future__ import annotations

import os

PIPELINE_RUN_ID = "DINOFLOW_PIPELINE_RUN_ID"  # one pipeline run: a KFP run id, or a local driver's id
PIPELINE_RUN_NAME = "DINOFLOW_PIPELINE_RUN_NAME"  # its human-readable name, where known
PARENT_RUN_ID = "DINOFLOW_PARENT_RUN_ID"  # the MLflow parent run a driver opened for child processes
GIT_COMMIT = "DINOFLOW_GIT_COMMIT"  # the commit an image was built from (no .git inside images)
KFP_POD_NAME = "KFP_POD_NAME"  # set by the KFP launcher in every step pod
KFP_POD_UID = "KFP_POD_UID"
KFP_RUN_ID_LABEL = "pipeline/runid"  # the step pod label that holds the KFP run id


def _get(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def pipeline_run_id() -> str | None:
    """The pipeline run this process belongs to, or None (a stage run by hand)."""
    return _get(PIPELINE_RUN_ID)


def pipeline_run_name() -> str | None:
    return _get(PIPELINE_RUN_NAME)


def parent_run_id() -> str | None:
    return _get(PARENT_RUN_ID)


def git_commit_override() -> str | None:
    return _get(GIT_COMMIT)


def kfp_pod() -> tuple[str, str] | None:
    """(pod name, pod uid) of the KFP step pod this process runs in, or None outside Kubeflow."""
    name, uid = _get(KFP_POD_NAME), _get(KFP_POD_UID)
    return (name, uid) if name and uid else None
