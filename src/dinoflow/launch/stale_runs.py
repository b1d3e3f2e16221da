"""Close the MLflow parent runs of earlier pipeline runs that ended without their exit handler.

KFP runs the exit handler when a run ends, but not always after a terminate: the Argo workflow is
stopped and the handler's pod may never start, leaving that run's MLflow parent RUNNING forever.
So every pipeline run, as it starts, closes such leftovers: a parent run (tag `dinoflow.role` =
pipeline) of another pipeline run that is still RUNNING is set KILLED, with a tag saying why, when

- no pod of that pipeline run (label `pipeline/runid`) is Pending or Running in this namespace,
  so no step of it is alive and none is being retried right now, and
- nothing was logged under it (the parent's start, its stage runs' starts and ends) for `idle_s`,
  longer than a step's longest retry back-off, so a run between two attempts is left alone.

Outside a KFP step pod, or where the pods cannot be listed (no permission), nothing is closed:
without knowing that a run is dead, closing it could end a run that is still working.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from dinoflow.config.pipeline_env import KFP_RUN_ID_LABEL, kfp_pod
from dinoflow.errors import DinoflowError
from dinoflow.launch.k8s import api_client
from dinoflow.tracking import check_tracking_server, is_enabled, named_errors, tracking_uri
from dinoflow.tracking.parent import TAG_PIPELINE_RUN_ID, TAG_ROLE
from dinoflow.tracking.server import bound_http

log = logging.getLogger(__name__)

IDLE_S = 3600.0  # > the longest retry back-off of a step (pipelines/steps.py: 600 s) plus pod start-up
TAG_CLOSED_BY = "dinoflow.closed_by_pipeline_run"
TAG_CLOSE_REASON = "dinoflow.close_reason"
ALIVE_PHASES = ("Pending", "Running")
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def is_stale(*, alive: bool, last_activity_ms: int, now_ms: int, idle_s: float) -> bool:
    """A parent is stale when no pod of its pipeline run is alive and it has been idle for `idle_s`."""
    return not alive and now_ms - last_activity_ms >= idle_s * 1000


def last_activity_ms(client: Any, exp_id: str, parent: Any) -> int:
    """The latest start or end time (ms) of the parent and its stage runs."""
    children = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000
    )
    times = [parent.info.start_time or 0]
    for r in children:
        times += [r.info.start_time or 0, r.info.end_time or 0]
    return max(times)


def pods_alive(core_api: Any, namespace: str) -> Callable[[str], bool]:
    """`alive(run_id)`: whether a pod of pipeline run `run_id` is Pending or Running in `namespace`."""

    def alive(run_id: str) -> bool:
        pods = core_api.list_namespaced_pod(namespace, label_selector=f"{KFP_RUN_ID_LABEL}={run_id}")
        return any((p.status.phase if p.status else None) in ALIVE_PHASES for p in pods.items)

    return alive


def close_stale_parents(
    client: Any,
    exp_id: str,
    current_run_id: str,
    alive: Callable[[str], bool],
    *,
    now_ms: int | None = None,
    idle_s: float = IDLE_S,
) -> list[str]:
    """Set KILLED, with the reason as a tag, every stale RUNNING parent of another pipeline run;
    returns their MLflow run ids."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    parents = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'pipeline' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    closed = []
    for parent in parents:
        pipeline_run = parent.data.tags.get(TAG_PIPELINE_RUN_ID)
        if not pipeline_run or pipeline_run == current_run_id:
            continue  # a run started by hand (no pipeline run id), or this run's own parent
        idle = last_activity_ms(client, exp_id, parent)
        if not is_stale(alive=alive(pipeline_run), last_activity_ms=idle, now_ms=now_ms, idle_s=idle_s):
            continue
        reason = (
            f"closed when pipeline run {current_run_id} started: no pod of pipeline run {pipeline_run} was "
            f"Pending or Running and nothing was logged under it for {(now_ms - idle) / 1000:.0f} s; its exit "
            "handler did not run (a terminated run?)"
        )
        client.set_tag(parent.info.run_id, TAG_CLOSED_BY, current_run_id)
        client.set_tag(parent.info.run_id, TAG_CLOSE_REASON, reason)
        client.set_terminated(parent.info.run_id, status="KILLED")
        log.warning("MLflow run %s: %s", parent.info.run_id, reason)
        closed.append(parent.info.run_id)
    return closed


def close_stale_pipeline_runs(
    cfg: Any, current_run_id: str | None, *, namespace: str | None = None, k8s_host: str | None = None
) -> list[str]:
    """The pipeline's start-up step: close_stale_parents against this config's MLflow experiment and
    this pod's namespace. Nothing is closed where tracking is off or the pods cannot be listed."""
    import mlflow
    from kubernetes import client as k8s

    if not current_run_id:
        raise DinoflowError(
            "closing stale pipeline runs needs this run's id in $DINOFLOW_PIPELINE_RUN_ID (the DAG sets it "
            "from the pod's `pipeline/runid` label), so that it never closes its own parent"
        )
    if not is_enabled(cfg) or kfp_pod() is None:
        return []  # outside a KFP step pod, no pods tell which pipeline runs are alive
    try:
        core = k8s.CoreV1Api(api_client(k8s_host))
        ns = namespace or (SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else "default")
        alive = pods_alive(core, ns)
        alive("probe-permission")  # fails here, before anything is closed, without list permission
    except Exception as e:  # noqa: BLE001 - any failure means "cannot tell which runs are dead"
        log.warning("not closing stale pipeline runs: cannot list pods (%s: %s)", type(e).__name__, e)
        return []
    uri = tracking_uri(cfg)
    bound_http(cfg.tracking)
    check_tracking_server(uri, cfg.tracking.probe_timeout_s)
    with named_errors("closing stale pipeline runs", uri):
        mlc = mlflow.MlflowClient(uri)
        exp = mlc.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            return []
        return close_stale_parents(mlc, exp.experiment_id, current_run_id, alive)
