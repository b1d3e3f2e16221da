"""Submit a TrainJob, wait for it, and fail the calling step when it fails.

Talks to the Kubernetes API through `kubernetes.client.CustomObjectsApi` (the pipeline pod's
ServiceAccount in a cluster; `k8s/base/pipeline/rbac.yaml` grants exactly the calls made here
and in k8s_logs: trainjobs create/get/delete/patch, pods list, pods/log get, events list).
Status comes from the TrainJob's conditions: `Complete=True` succeeds, `Failed=True` fails
(`DeadlineExceeded` when its activeDeadlineSeconds ran out). While it waits, `run` streams the
rank-0 log into the step's log, and a SIGTERM (the run was cancelled, the step pod is stopping)
deletes the job before the step exits non-zero. A job whose node pods have not started within
`pending_timeout` (no GPUs free, a Kueue queue that does not admit it, an unschedulable node
selector) fails the step with the scheduler's and the queue's events about it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from dinoflow.errors import DinoflowError
from dinoflow.interrupts import raise_on_sigterm
from dinoflow.launch.k8s_logs import LogFollower
from dinoflow.launch.trainjob import GROUP, PLURAL, VERSION, validate_trainer_object

log = logging.getLogger(__name__)


class TrainJobFailed(DinoflowError):
    """The TrainJob reached `Failed` (or vanished); the message carries the controller's reason."""


class TrainJobCancelled(DinoflowError):
    """The step got SIGTERM while its TrainJob ran; the job has been deleted."""


@dataclass
class JobState:
    phase: str  # "Pending" | "Running" | "Complete" | "Failed" | "Suspended"
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in ("Complete", "Failed")


class TrainJobPending(TrainJobFailed):
    """The TrainJob's node pods did not start within the pending timeout; the message carries
    the events the scheduler and the queue recorded about it."""


def started(obj: dict[str, Any]) -> bool:
    """True once a node pod of the job has run (ready, succeeded or failed) or the job ended.
    `active` is not enough: a Job counts its Pending (unschedulable) pods as active."""
    if job_state(obj).finished:
        return True
    jobs = (obj.get("status") or {}).get("jobsStatus") or []
    return any((j.get("ready") or 0) + (j.get("succeeded") or 0) + (j.get("failed") or 0) > 0 for j in jobs)


def job_state(obj: dict[str, Any]) -> JobState:
    """Reduce a TrainJob's status conditions to one phase (terminal conditions win)."""
    conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    for phase in ("Failed", "Complete", "Suspended"):
        if phase in conds:
            c = conds[phase]
            return JobState(phase, c.get("reason", ""), c.get("message", ""))
    if (obj.get("status") or {}).get("jobsStatus"):
        return JobState("Running")
    return JobState("Pending")


def api_client(host: str | None = None, token: str | None = None):
    """A Kubernetes ApiClient: explicit `host` (tests, port-forwards), else in-cluster config, else kubeconfig."""
    from kubernetes import client, config

    if host:
        cfg = client.Configuration()
        cfg.host = host
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as e:  # the kube client raises several unrelated types
            raise DinoflowError(
                "no Kubernetes API: not in a cluster and no usable kubeconfig; pass --k8s-host or set KUBECONFIG"
            ) from e
    return client.ApiClient()


class TrainJobClient:
    """create / get / delete / wait for TrainJobs in one namespace."""

    def __init__(
        self,
        namespace: str,
        api: Any = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        from kubernetes import client

        self.namespace = namespace
        self.api = client.CustomObjectsApi(api if api is not None else api_client())
        self._sleep, self._clock = sleep, clock

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(GROUP, VERSION, self.namespace, PLURAL, *args, **kwargs)
        except ApiException as e:
            if e.status == 403:
                raise DinoflowError(
                    f"{what}: forbidden; the step's ServiceAccount needs the dinoflow-trainjobs Role "
                    "(k8s/base/pipeline/rbac.yaml)"
                ) from None
            if e.status == 404 and what.startswith("create"):
                raise DinoflowError(
                    f"{what}: the TrainJob API is missing; install Kubeflow Trainer v2 in the cluster"
                ) from None
            raise

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(f"get TrainJob {name}", self.api.get_namespaced_custom_object, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise DinoflowError(f"get TrainJob {name}: Kubernetes API error {e.status} {e.reason}") from None

    def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(f"delete TrainJob {name}", self.api.delete_namespaced_custom_object, name)
        except ApiException as e:
            if e.status != 404:
                raise DinoflowError(f"delete TrainJob {name}: Kubernetes API error {e.status} {e.reason}") from None

    def add_owner(self, name: str, existing: dict[str, Any], owner: dict[str, Any]) -> None:
        """Add `owner` to the job's ownerReferences (a retried step adopts the job it re-attaches
        to, so the job survives the earlier attempt's pod and still dies with the run)."""
        refs = list((existing.get("metadata") or {}).get("ownerReferences") or [])
        if any(r.get("uid") == owner["uid"] for r in refs):
            return
        patch = {"metadata": {"ownerReferences": [*refs, owner]}}
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(f"patch TrainJob {name}", self.api.patch_namespaced_custom_object, name, patch)
        except ApiException as e:
            raise DinoflowError(f"patch TrainJob {name}: Kubernetes API error {e.status} {e.reason}") from None

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Create the TrainJob. A step retried after preemption re-attaches to its running job
        (same deterministic name) and adds its pod as an owner; a previous *failed* attempt is
        deleted and submitted afresh."""
        from kubernetes.client.exceptions import ApiException

        validate_trainer_object(job)
        name = job["metadata"]["name"]
        try:
            return self._call(f"create TrainJob {name}", self.api.create_namespaced_custom_object, job)
        except ApiException as e:
            if e.status != 409:
                raise DinoflowError(f"create TrainJob {name}: Kubernetes API error {e.status} {e.reason}") from None
        existing = self.get(name)
        if existing is not None and job_state(existing).phase != "Failed":
            log.info("TrainJob %s already exists (%s); attaching to it", name, job_state(existing).phase)
            for owner in job["metadata"].get("ownerReferences") or []:
                self.add_owner(name, existing, owner)
            return existing
        log.info("TrainJob %s failed before; deleting it and submitting again", name)
        self.delete(name)
        self._wait_gone(name)
        return self._call(f"create TrainJob {name}", self.api.create_namespaced_custom_object, job)

    def _wait_gone(self, name: str, timeout: float = 120.0, poll: float = 1.0) -> None:
        end = self._clock() + timeout
        while self.get(name) is not None:
            if self._clock() > end:
                raise DinoflowError(f"TrainJob {name} was not deleted within {timeout:.0f} s")
            self._sleep(poll)

    def events(self, name: str, limit: int = 20) -> list[str]:
        """The namespace's events about the job and what it created (JobSet, Jobs, pods, Kueue's
        Workload), oldest first, as `Kind/name reason: message`."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            items = client.CoreV1Api(self.api.api_client).list_namespaced_event(self.namespace).items
        except ApiException as e:
            return [f"(events not readable: {e.status} {e.reason}; k8s/base/pipeline/rbac.yaml grants `events: list`)"]
        mine = [e for e in items if e.involved_object is not None and name in (e.involved_object.name or "")]
        mine.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""))
        return [
            f"{e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
            + (f" (x{e.count})" if (e.count or 0) > 1 else "")
            for e in mine[-limit:]
        ]

    def wait(
        self,
        name: str,
        *,
        timeout: float = 7 * 24 * 3600.0,
        poll: float = 10.0,
        on_change: Callable[[JobState], None] | None = None,
        pending_timeout: float | None = None,
    ) -> JobState:
        """Poll until the job completes; raise TrainJobFailed if it fails, disappears or times out,
        TrainJobPending if no node pod has started within `pending_timeout` seconds (None: no limit)."""
        begin = self._clock()
        end = begin + timeout
        last: JobState | None = None
        running = False
        while True:
            obj = self.get(name)
            if obj is None:
                raise TrainJobFailed(f"TrainJob {self.namespace}/{name} disappeared while we waited for it")
            state = job_state(obj)
            if state != last:
                log.info("TrainJob %s: %s %s %s", name, state.phase, state.reason, state.message)
                if on_change:
                    on_change(state)
                last = state
            if state.phase == "Complete":
                return state
            if state.phase == "Failed":
                raise TrainJobFailed(
                    f"TrainJob {self.namespace}/{name} failed: {state.reason or 'no reason given'}"
                    + (f" ({state.message})" if state.message else "")
                )
            if self._clock() > end:
                raise TrainJobFailed(
                    f"TrainJob {self.namespace}/{name} did not finish within {timeout:.0f} s (last: {state.phase})"
                )
            running = running or started(obj)
            if not running and pending_timeout is not None and self._clock() - begin > pending_timeout:
                events = self.events(name) or ["(no events recorded)"]
                raise TrainJobPending(
                    f"TrainJob {self.namespace}/{name} has not started a node pod within {pending_timeout:.0f} s "
                    f"({state.phase}); what the scheduler and queue say:\n  " + "\n  ".join(events)
                )
            self._sleep(poll)

    def run(
        self,
        job: dict[str, Any],
        *,
        timeout: float = 7 * 24 * 3600.0,
        poll: float = 10.0,
        delete_on_failure: bool = True,
        follow_logs: bool = True,
        pending_timeout: float | None = None,
    ) -> JobState:
        """submit + wait, streaming the rank-0 log. The job is deleted (its GPUs freed) when it
        fails or times out (unless `delete_on_failure` is off) and always on SIGTERM."""
        name = job["metadata"]["name"]

        def cancelled(signame: str) -> TrainJobCancelled:
            return TrainJobCancelled(
                f"{signame} while waiting for TrainJob {self.namespace}/{name}: "
                "the run was cancelled or the step pod is stopping"
            )

        try:
            with raise_on_sigterm(cancelled):
                self.submit(job)
                follower = (
                    LogFollower(self.api.api_client, self.namespace, name) if follow_logs else contextlib.nullcontext()
                )
                with follower:
                    return self.wait(name, timeout=timeout, poll=poll, pending_timeout=pending_timeout)
        except TrainJobCancelled:
            log.warning("deleting TrainJob %s/%s: the step was told to stop", self.namespace, name)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not stop the delete
            self.delete(name)
            raise
        except TrainJobFailed:
            if delete_on_failure:
                self.delete(name)
            raise
