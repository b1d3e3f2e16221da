"""Stream a TrainJob's rank-0 log into the pipeline step's own log while the step waits.

Kubeflow Trainer runs a TrainJob as a JobSet named after it; the trainer nodes are the pods of
its replicated job `node`, labelled `jobset.sigs.k8s.io/jobset-name=<job>` and
`jobset.sigs.k8s.io/replicatedjob-name=node`. The node job is an Indexed Job, so each pod carries
its node rank in the `batch.kubernetes.io/job-completion-index` annotation (the torch runtime
derives PET_NODE_RANK from it): rank 0 is the pod whose index is "0". A restarted rank-0 pod (a
new uid) is followed again from its start.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

from dinoflow.launch.trainjob import NODE_JOB

log = logging.getLogger(__name__)

JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
_STARTED = ("Running", "Succeeded", "Failed")  # phases whose log can be read


def node_selector(job: str) -> str:
    """The label selector of a TrainJob's node pods."""
    return f"{JOBSET_NAME_LABEL}={job},{REPLICATED_JOB_LABEL}={NODE_JOB}"


def rank0_pod(core: Any, namespace: str, job: str) -> Any | None:
    """The newest started rank-0 node pod of `job`, or None while there is none."""
    pods = core.list_namespaced_pod(namespace, label_selector=node_selector(job)).items
    rank0 = [
        p
        for p in pods
        if (p.metadata.annotations or {}).get(COMPLETION_INDEX) == "0"
        and p.status is not None
        and p.status.phase in _STARTED
    ]
    return max(rank0, key=lambda p: p.metadata.creation_timestamp or "", default=None)


class LogFollower:
    """Background thread: find the rank-0 pod, follow its log line by line into `out`.

    Used as a context manager around the wait; a failure to read logs (e.g. missing `pods/log`
    permission) is reported once and never fails the step: the job's status decides that.
    """

    def __init__(self, api_client: Any, namespace: str, job: str, *, out: TextIO | None = None, poll_s: float = 5.0):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace, self.job, self.poll_s = namespace, job, poll_s
        self.out = out or sys.stdout
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logs-{job}", daemon=True)
        self._response: Any = None
        self._warned = False

    def __enter__(self) -> "LogFollower":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following; lets a stream of a finished pod drain first (bounded by `timeout`)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive() and self._response is not None:
            try:  # still blocked on a live stream (the step is being cancelled): cut it
                self._response.close()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass

    def _run(self) -> None:
        followed: set[str] = set()
        while True:
            try:
                pod = rank0_pod(self.core, self.namespace, self.job)
                if pod is not None and pod.metadata.uid not in followed:
                    followed.add(pod.metadata.uid)
                    self._follow(pod.metadata.name)
            except Exception as e:  # noqa: BLE001 - logs are a convenience, never a failure
                if not self._warned:
                    log.warning("cannot stream the logs of TrainJob %s: %s", self.job, e)
                    self._warned = True
            if self._stop.wait(self.poll_s):
                return

    def _follow(self, pod: str) -> None:
        self._response = self.core.read_namespaced_pod_log(
            pod, self.namespace, container=NODE_JOB, follow=True, _preload_content=False
        )
        prefix = f"[{self.job} rank0] "
        pending = b""
        try:
            for chunk in self._response.stream(4096):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    self._emit(prefix, line)
            if pending:
                self._emit(prefix, pending)
        finally:
            self._response.release_conn()
            self._response = None

    def _emit(self, prefix: str, line: bytes) -> None:
        self.out.write(prefix + line.decode("utf-8", "replace") + "\n")
        self.out.flush()
        self.lines += 1
