"""Which MLflow run is the parent of a stage run: one parent per pipeline run.

In this order:
1. an MLflow run active in this process (a driver's `pipeline_parent_run`);
2. `$DINOFLOW_PARENT_RUN_ID`, set by a driver for its child processes (`dvc repro` inside the
   demo, torchrun workers);
3. `$DINOFLOW_PIPELINE_RUN_ID` (Kubeflow: the run id from the step pod's label): the run tagged
   with it is found on the server, or created by the first stage; pods share nothing else. Steps
   that start together (a fan-out) may both create one: each then keeps the earliest, deleting
   its own, so all converge on one parent;
4. otherwise (`dvc repro` or `dinoflow <stage>` by hand) a small state file in the user's state
   directory (`$DINOFLOW_STATE_DIR`, `$XDG_STATE_HOME/dinoflow` or `~/.local/state/dinoflow`),
   keyed by working directory, server and experiment — never in the working directory, which
   may be read-only. A stage joins the recorded parent when it comes later in the pipeline order
   than the last one recorded; otherwise it starts a new pipeline run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinoflow.config import pipeline_env
from dinoflow.config.stages import PIPELINE_ORDER
from dinoflow.io import atomic_write_text

TAG_ROLE = "dinoflow.role"
TAG_PIPELINE_RUN_ID = "dinoflow.pipeline_run_id"
TAG_PIPELINE_RUN_NAME = "dinoflow.pipeline_run_name"


@dataclass(frozen=True)
class Parent:
    run_id: str
    state_file: Path | None = None  # set when the parent is tracked through the local state file


def state_dir() -> Path:
    explicit = os.environ.get("DINOFLOW_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dinoflow"


def _state_file(uri: str, exp_id: str) -> Path:
    key = hashlib.sha256(f"{Path.cwd().resolve()}\n{uri}\n{exp_id}".encode()).hexdigest()[:20]
    return state_dir() / f"pipeline-{key}.json"


def _stage_index(stage: str) -> int:
    return PIPELINE_ORDER.index(stage) if stage in PIPELINE_ORDER else len(PIPELINE_ORDER)


def parent_tags(context: dict[str, str], run_id: str | None) -> dict[str, str]:
    tags = {**context, TAG_ROLE: "pipeline"}
    if run_id:
        tags[TAG_PIPELINE_RUN_ID] = run_id
    name = pipeline_env.pipeline_run_name()
    if name:
        tags[TAG_PIPELINE_RUN_NAME] = name
    return tags


def _create(client: Any, exp_id: str, context: dict[str, str], run_id: str | None) -> str:
    name = pipeline_env.pipeline_run_name() or (
        f"pipeline-{run_id}" if run_id else time.strftime("pipeline-%Y%m%d-%H%M%S")
    )
    return client.create_run(exp_id, tags=parent_tags(context, run_id), run_name=name).info.run_id


def _tagged(client: Any, exp_id: str, run_id: str) -> list[Any]:
    quoted = run_id.replace("'", "\\'")
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_PIPELINE_RUN_ID}` = '{quoted}'", max_results=50)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def parent_for_pipeline_run(client: Any, exp_id: str, run_id: str, context: dict[str, str]) -> str:
    """The one parent run of pipeline run `run_id` (found, or created race-safely)."""
    found = _tagged(client, exp_id, run_id)
    if found:
        return found[0].info.run_id
    mine = _create(client, exp_id, context, run_id)
    first = _tagged(client, exp_id, run_id)[0].info.run_id
    if first != mine:  # another step created one at the same time: keep the earliest
        client.delete_run(mine)
    return first


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def parent_from_state(client: Any, exp_id: str, uri: str, stage: str, context: dict[str, str]) -> Parent:
    path = _state_file(uri, exp_id)
    state = _read_state(path)
    run_id = state.get("run_id")
    if run_id and _stage_index(stage) > int(state.get("last_stage_index", len(PIPELINE_ORDER))):
        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                return Parent(run_id, path)
        except Exception:  # noqa: BLE001 - deleted or unknown: start a new pipeline run
            pass
    return Parent(_create(client, exp_id, context, None), path)


def record_state(parent: Parent, stage: str) -> None:
    """Remember the parent for the next stage run by hand; a read-only home only loses the grouping."""
    if parent.state_file is None:
        return

    try:
        parent.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            parent.state_file,
            json.dumps(
                {
                    "run_id": parent.run_id,
                    "cwd": str(Path.cwd().resolve()),
                    "last_stage": stage,
                    "last_stage_index": _stage_index(stage),
                }
            ),
        )
    except OSError as e:
        warnings.warn(
            f"cannot record the pipeline run in {parent.state_file} ({e}); "
            "the next stage will start its own pipeline run",
            stacklevel=2,
        )


def resolve_parent(
    client: Any, exp_id: str, uri: str, stage: str, context: dict[str, str], outer_run_id: str | None
) -> Parent:
    if outer_run_id:
        return Parent(outer_run_id)
    if pipeline_env.parent_run_id():
        return Parent(pipeline_env.parent_run_id())  # type: ignore[arg-type]
    run_id = pipeline_env.pipeline_run_id()
    if run_id:
        return Parent(parent_for_pipeline_run(client, exp_id, run_id, context))
    return parent_from_state(client, exp_id, uri, stage, context)
