"""Large data passes between pipeline steps by reference, never by copy.

A KFP output artifact is uploaded to KFP's artifact store when the step ends and downloaded into
the ephemeral disk of every pod that reads it (and the TrainJob launcher then copied it once more
onto the shared volume): at pool scale, embeddings and curated shards would fill node disks. So
where the shared ReadWriteMany volume is mounted, a step writes such data once, to

    <shared_dir>/data/<pipeline run id>/<name>/

and its output artifact holds only a reference file naming that directory; readers resolve the
reference and read in place (the TrainJob launcher does not stage what is already on the volume).
The directory is keyed by the run that produced it and is kept after the run: a later run whose
step is served from KFP's cache reads the same directory. Remove a run's `data/<run id>/` when no
cached step may point at it any more. Without the volume (kfp.local on a laptop), the data is
written into the artifact itself, as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dinoflow.config.pipeline_env import pipeline_run_id
from dinoflow.errors import DinoflowError
from dinoflow.launch import shared

REF_FILE = "dinoflow-data-ref.json"


def output_dir(artifact_path: str | Path, name: str, shared_dir: str | Path = shared.SHARED_DIR) -> Path:
    """Where a step writes its large output `name`: an empty durable directory on the shared volume
    (a retried attempt starts it afresh), or the artifact's own path when there is no volume."""
    run_id = pipeline_run_id()
    if not run_id or not shared.is_mounted(shared_dir):
        return Path(artifact_path)
    target = Path(shared_dir) / "data" / shared.require_run_id(run_id, f"the {name} output") / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    return target


def publish_ref(artifact_path: str | Path, target: str | Path) -> None:
    """Make the output artifact a reference to `target` (nothing to do when they are the same)."""
    artifact, target = Path(artifact_path), Path(target)
    if artifact.resolve() == target.resolve():
        return
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / REF_FILE).write_text(json.dumps({"path": str(target)}))


def resolve(artifact_path: str | Path) -> str:
    """The directory an input artifact stands for: its reference's target, or the artifact itself."""
    ref = Path(artifact_path) / REF_FILE
    if not ref.is_file():
        return str(artifact_path)
    target = Path(json.loads(ref.read_text())["path"])
    if not target.is_dir():
        raise DinoflowError(
            f"input artifact {artifact_path} refers to {target}, which is gone from the shared volume (removed "
            "after its run?). Run the producing step again: submit with caching disabled for it"
        )
    return str(target)


def on_volume(path: str | Path, shared_dir: str | Path = shared.SHARED_DIR) -> bool:
    """True when `path` already lies on the shared volume (no staging copy needed)."""
    try:
        Path(path).resolve().relative_to(Path(shared_dir).resolve())
        return True
    except ValueError:
        return False
