"""The shared ReadWriteMany volume (`dinoflow-shared`, mounted at `shared_dir`): per pipeline run
and stage, what a training step keeps there so that a retried step (preempted node, failed
attempt) finds it again, and when it is removed.

    <shared_dir>/<run id>/<stage>/
        ckpt/          resumable checkpoints (every launch mode)
        in/<key>/      inputs staged for TrainJob pods (multi-node only)
        out/<key>/     outputs the TrainJob pods write (multi-node only)
        params.yaml    the config the TrainJob pods read (multi-node only)

The directory outlives failed attempts (that is the point) and is removed once the step has
succeeded and its outputs are in the step's output artifacts.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from dinoflow.config.pipeline_env import PIPELINE_RUN_ID
from dinoflow.errors import DinoflowError

SHARED_DIR = "/mnt/dinoflow-shared"  # where the pipeline steps, the training runtime and torchx mount `dinoflow-shared`
# The config key of a stage's checkpoint directory (default: <out_dir>/ckpt; see train/run_dir.py).
CHECKPOINT_DIR_KEY = "{stage}.train.checkpoint_dir"
# Stages with training checkpoints. curate has none (no `curate.train`): a retried curate step
# resumes from the embedding shards it is given (its work directory: the fan-out tasks' outputs).
CHECKPOINTED_STAGES = ("pretrain", "distill")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def checkpoint_key(stage: str) -> str:
    return CHECKPOINT_DIR_KEY.format(stage=stage)


def checkpoint_wiring(stage: str, root: Path) -> dict[str, str]:
    """Config wiring that puts `stage`'s checkpoints under `root` (a stage_dir); {} for a stage without."""
    return {checkpoint_key(stage): str(root / "ckpt")} if stage in CHECKPOINTED_STAGES else {}


def is_mounted(shared_dir: str | Path) -> bool:
    """True when the shared volume is there; an existing but unwritable one is an error."""
    path = Path(shared_dir)
    if not path.is_dir():
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        raise DinoflowError(
            f"the shared volume {path} is mounted but not writable by uid {os.getuid()} (a fresh volume is "
            "often root-owned 0755, and KFP sets no fsGroup): run the one-time preparation Job once, "
            "`kubectl -n <pipeline namespace> apply -f` the dinoflow-prepare-shared-volume Job of k8s/ "
            "(k8s/base/pipeline/prepare-shared-volume.yaml, applied with the overlay), or chown the volume's "
            f"root directory to {os.getuid()} on the storage server"
        )
    return True


def require_run_id(run_id: str | None, what: str) -> str:
    """The pipeline run id, checked to be one path component; a named error when it is missing."""
    if not run_id:
        raise DinoflowError(
            f"{what} needs the pipeline run id to key its shared directory and job, but {PIPELINE_RUN_ID} "
            "is not set; the Kubeflow DAG sets it from the step pod's `pipeline/runid` label (downward API), "
            "elsewhere export it (any unique id of this pipeline run)"
        )
    if not _SAFE.match(run_id):
        raise DinoflowError(
            f"pipeline run id {run_id!r} is not usable as a directory name (letters, digits, . _ - only)"
        )
    return run_id


def stage_dir(shared_dir: str | Path, run_id: str, stage: str) -> Path:
    """`<shared_dir>/<run id>/<stage>` (not created)."""
    return Path(shared_dir) / require_run_id(run_id, f"the {stage} step") / stage


def clean(root: Path) -> None:
    """Remove a stage's directory after success, and its run directory once that is empty."""
    if root.exists():
        shutil.rmtree(root)
    try:
        root.parent.rmdir()
    except OSError:  # another stage of the run still keeps its files there
        pass
