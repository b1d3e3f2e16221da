"""Runs a stage could not end because the tracking server was gone: ended FAILED at the next start.

A stage whose server dies under it fails with a named error, but it cannot tell the server that
its run (and the pipeline run it was to end) is over: they would stay RUNNING forever. It records
their ids in the user's state directory instead (one small file per run, keyed by the server),
and the next stage or driver that reaches that server ends each one still RUNNING as FAILED,
with a tag saying why.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

from dinoflow.config.secrets import redact_urls as redact
from dinoflow.io import atomic_write_text
from dinoflow.tracking.parent import state_dir

TAG_CLOSED = "dinoflow.closed_after_lost_server"


def _folder() -> Path:
    return state_dir() / "unclosed"


def _prefix(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def remember(uri: str, run_ids: list[str], what: str) -> None:
    """Record runs that could not be ended on `uri`; a state directory that cannot be written only warns."""
    for run_id in run_ids:
        record = {"run_id": run_id, "server": redact(uri), "what": what, "since": time.time()}
        path = _folder() / f"{_prefix(uri)}-{run_id}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record))
        except OSError as e:
            warnings.warn(f"cannot record unfinished MLflow run {run_id} in {path} ({e}): end it by hand", stacklevel=2)


def close_remembered(client: Any, uri: str) -> list[str]:
    """End every remembered run of `uri` that is still RUNNING as FAILED; returns their ids.

    Best effort: a run that cannot be ended now stays remembered for the next start.
    """
    folder = _folder()
    if not folder.is_dir():
        return []
    closed = []
    for path in sorted(folder.glob(f"{_prefix(uri)}-*.json")):
        try:
            record = json.loads(path.read_text())
            run_id = str(record["run_id"])
            if client.get_run(run_id).info.status == "RUNNING":
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("since", 0))))
                client.set_tag(run_id, TAG_CLOSED, f"{record.get('what', 'a stage')} lost the server at {when}")
                client.set_terminated(run_id, status="FAILED")
                closed.append(run_id)
        except (OSError, ValueError, KeyError) as e:  # a damaged record: drop it, it names nothing usable
            warnings.warn(f"ignoring damaged record {path}: {e}", stacklevel=2)
        except Exception as e:  # noqa: BLE001 - best effort, whatever the server answers
            if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":  # a deleted run needs no ending
                warnings.warn(f"cannot end unfinished MLflow run from {path} yet: {e}", stacklevel=2)
                continue
        path.unlink(missing_ok=True)
    return closed
