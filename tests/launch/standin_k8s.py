"""A STAND-IN Kubernetes API server on loopback for the launcher's tests.

No Kubernetes API server (nor Kubeflow Trainer / JobSet controllers) can run on this machine, so
this serves only the endpoints the launcher calls — trainjobs create/get/delete/patch
(`trainer.kubeflow.org/v1alpha1`), pods list, pods/log get, events list — and plays the controllers the way
the real ones behave: a created TrainJob gets one node pod per node, labelled and annotated as
JobSet / the Indexed Job controller label them; after `polls` GETs the job turns Complete or
Failed (as the test asks), or, for a job in `unschedulable`, stays with its pods Pending and
records the scheduler's FailedScheduling event about each, as kube-scheduler does when no node
fits; a deleted job takes its pods with it. The real `kubernetes` client
talks to it over HTTP. Every request is recorded as (method, path, RBAC verb, resource).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

JOB_RE = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS_RE = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?$")
EVENTS_RE = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
NO_GPU = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available."


class StandInCluster:
    def __init__(self, polls: int = 2):
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, str] = {}  # pod name → its log
        self.gets: dict[str, int] = {}
        self.outcome: dict[str, str] = {}
        self.requests: list[tuple[str, str, str, str]] = []
        self.polls = polls
        self.on_complete = None  # callback(job): what the trainer pods would have done
        self.unschedulable: set[str] = set()  # jobs whose node pods no node can take
        self.events: list[dict] = []
        self.host = ""

    def create_pods(self, job: dict) -> None:
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        for rank in range(job["spec"]["trainer"]["numNodes"]):
            pod = f"{name}-node-0-{rank}-{uuid.uuid4().hex[:5]}"
            self.pods[pod] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                    "labels": {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": "node"},
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(rank)},
                },
                "spec": {"containers": [{"name": "node", "image": job["spec"]["trainer"]["image"]}]},
                "status": {"phase": "Running"},
            }
            self.logs[pod] = "".join(f"rank{rank} step {s} loss {1.0 / (s + 1):.3f}\n" for s in range(3))

    def schedule_fails(self, job: dict) -> None:
        """Pods stay Pending; the scheduler records why (and an unrelated pod's event is there too)."""
        for pod in self.pods.values():
            if pod["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == job["metadata"]["name"]:
                pod["status"] = {"phase": "Pending"}
                self.events.append(_event("Pod", pod["metadata"]["name"], "FailedScheduling", NO_GPU))
        self.events.append(_event("Pod", "someone-else-0", "Pulled", "image pulled"))
        nodes = job["spec"]["trainer"]["numNodes"]
        job["status"] = {"jobsStatus": [{"name": "node", "active": nodes, "ready": 0, "succeeded": 0, "failed": 0}]}

    def advance(self, name: str) -> None:
        job = self.jobs[name]
        self.gets[name] += 1
        if name in self.unschedulable:
            if "status" not in job:
                self.schedule_fails(job)
            return
        if self.gets[name] >= self.polls and "conditions" not in job.get("status", {}):
            kind = self.outcome.get(name, "Complete")
            if kind == "Complete" and self.on_complete:
                self.on_complete(job)
            job["status"] = {
                "conditions": [
                    {
                        "type": kind,
                        "status": "True",
                        "reason": "JobFailed" if kind == "Failed" else "JobsCompleted",
                        "message": "node-0 exited with code 1" if kind == "Failed" else "done",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ]
            }
        elif "status" not in job:
            nodes = job["spec"]["trainer"]["numNodes"]
            job["status"] = {
                "jobsStatus": [
                    {"name": "node", "active": nodes, "ready": nodes, "succeeded": 0, "failed": 0, "suspended": 0}
                ]
            }

    def verbs(self) -> set[tuple[str, str]]:
        return {(resource, verb) for _, _, verb, resource in self.requests}


def _event(kind: str, name: str, reason: str, message: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": "x"},
        "involvedObject": {"kind": kind, "name": name},
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": 3,
        "lastTimestamp": "2026-01-01T00:00:00Z",
    }


def _handler(cluster: StandInCluster):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n)) if n else {}

        def _send(self, code: int, body: dict | bytes, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str) -> None:
            self._send(
                code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
            )

        def _route(self, method: str):
            url = urlparse(self.path)
            m = JOB_RE.match(url.path)
            if m:
                verb = {"POST": "create", "GET": "get", "DELETE": "delete", "PATCH": "patch"}[method]
                cluster.requests.append((method, url.path, verb, "trainjobs"))
                return "job", m.group(2), parse_qs(url.query)
            m = PODS_RE.match(url.path)
            if m and method == "GET":
                resource = "pods/log" if m.group(3) else "pods"
                cluster.requests.append((method, url.path, "get" if m.group(2) else "list", resource))
                return resource, m.group(2), parse_qs(url.query)
            if EVENTS_RE.match(url.path) and method == "GET":
                cluster.requests.append((method, url.path, "list", "events"))
                return "events", None, parse_qs(url.query)
            cluster.requests.append((method, url.path, "?", "?"))
            return None, None, {}

        def do_POST(self):
            kind, name, _ = self._route("POST")
            body = self._body()
            if kind != "job" or name:
                return self._status(404, "NotFound")
            name = body["metadata"]["name"]
            if name in cluster.jobs:
                return self._status(409, "AlreadyExists")
            body["metadata"]["uid"] = str(uuid.uuid4())
            cluster.jobs[name] = body
            cluster.gets[name] = 0
            cluster.create_pods(body)
            self._send(201, body)

        def do_PATCH(self):
            kind, name, _ = self._route("PATCH")
            patch = self._body()
            if kind != "job" or name not in cluster.jobs:
                return self._status(404, "NotFound")
            assert self.headers["Content-Type"] == "application/merge-patch+json"
            meta = cluster.jobs[name]["metadata"]
            meta.update(patch.get("metadata", {}))  # merge patch: lists replace wholesale
            self._send(200, cluster.jobs[name])

        def do_GET(self):
            kind, name, query = self._route("GET")
            if kind == "job":
                if name not in cluster.jobs:
                    return self._status(404, "NotFound")
                cluster.advance(name)
                return self._send(200, cluster.jobs[name])
            if kind == "pods" and name is None:
                wanted = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
                items = [
                    p
                    for p in cluster.pods.values()
                    if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
                ]
                return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
            if kind == "events":
                return self._send(
                    200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": cluster.events}
                )
            if kind == "pods/log" and name in cluster.logs:
                assert query.get("container") == ["node"] and query.get("follow", [""])[0].lower() == "true"
                return self._send(200, cluster.logs[name].encode(), "text/plain")
            self._status(404, "NotFound")

        def do_DELETE(self):
            kind, name, _ = self._route("DELETE")
            if kind != "job" or name not in cluster.jobs:
                return self._status(404, "NotFound")
            del cluster.jobs[name]
            for pod in [
                p for p, v in cluster.pods.items() if v["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == name
            ]:
                del cluster.pods[pod]
            self._send(200, {"kind": "Status", "status": "Success"})

    return H


def start(polls: int = 2) -> tuple[StandInCluster, ThreadingHTTPServer]:
    cluster = StandInCluster(polls)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cluster.host = f"http://127.0.0.1:{server.server_address[1]}"
    return cluster, server
