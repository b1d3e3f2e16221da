"""Submit / wait / fail logic against a STAND-IN Kubernetes API server on loopback.

No real cluster (nor Kubeflow Trainer controller) can run on this machine, so the server below
implements only the endpoints the launcher uses (create / get / delete of
`trainer.kubeflow.org/v1alpha1` trainjobs) and plays the controller: after a few GETs it marks
the job Complete or Failed, as the test asks. The real `kubernetes` client talks to it over HTTP.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dinoflow.errors import DinoflowError
from dinoflow.launch.k8s import TrainJobClient, TrainJobFailed, api_client, job_state
from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob

PATH_RE = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/?]+))?")


class StandInCluster:
    """In-memory TrainJobs + a toy controller: `outcome[name]` decides Complete / Failed after `polls` GETs."""

    def __init__(self, polls: int = 2):
        self.jobs: dict[str, dict] = {}
        self.gets: dict[str, int] = {}
        self.outcome: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.polls = polls
        self.on_complete = None  # callback(job) — e.g. write the job's outputs


def _handler(cluster: StandInCluster):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code})

        def do_POST(self):
            m = PATH_RE.match(self.path)
            cluster.requests.append(("POST", self.path))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = body["metadata"]["name"]
            if not m or m.group(2):
                return self._status(404, "NotFound")
            if name in cluster.jobs:
                return self._status(409, "AlreadyExists")
            cluster.jobs[name] = body
            cluster.gets[name] = 0
            self._send(201, body)

        def do_GET(self):
            m = PATH_RE.match(self.path)
            cluster.requests.append(("GET", self.path))
            name = m.group(2) if m else None
            if name not in cluster.jobs:
                return self._status(404, "NotFound")
            job = cluster.jobs[name]
            cluster.gets[name] += 1
            if cluster.gets[name] >= cluster.polls and "conditions" not in job.get("status", {}):
                kind = cluster.outcome.get(name, "Complete")
                if kind == "Complete" and cluster.on_complete:
                    cluster.on_complete(job)
                job["status"] = {"conditions": [{
                    "type": kind, "status": "True", "reason": "JobFailed" if kind == "Failed" else "JobsCompleted",
                    "message": "node-0 exited with code 1" if kind == "Failed" else "done",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            elif "status" not in job:
                job["status"] = {"jobsStatus": [{"name": "node", "active": 1}]}
            self._send(200, job)

        def do_DELETE(self):
            m = PATH_RE.match(self.path)
            cluster.requests.append(("DELETE", self.path))
            name = m.group(2) if m else None
            if name not in cluster.jobs:
                return self._status(404, "NotFound")
            del cluster.jobs[name]
            self._send(200, {"kind": "Status", "status": "Success"})

    return H


@pytest.fixture
def cluster():
    c = StandInCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(c))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    c.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield c
    server.shutdown()
    server.server_close()


def _job(name: str = "dinoflow-r1-pretrain") -> dict:
    return build_trainjob(TrainJobRequest(name=name, namespace="dinoflow", image="img:1",
                                          command=["torchrun", "-m", "dinoflow", "pretrain"]))


def _client(cluster) -> TrainJobClient:
    return TrainJobClient("dinoflow", api_client(cluster.host), sleep=lambda s: None)


def test_submit_and_wait_until_complete(cluster):
    state = _client(cluster).run(_job(), poll=0.0)
    assert state.phase == "Complete"
    assert cluster.requests[0] == ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/dinoflow/trainjobs")
    assert sum(1 for m, _ in cluster.requests if m == "GET") == cluster.polls


def test_a_failed_job_fails_the_step_with_the_controllers_reason(cluster):
    cluster.outcome["dinoflow-r1-pretrain"] = "Failed"
    with pytest.raises(TrainJobFailed, match="JobFailed.*node-0 exited with code 1"):
        _client(cluster).run(_job(), poll=0.0, delete_on_failure=True)
    assert "dinoflow-r1-pretrain" not in cluster.jobs  # GPUs released


def test_a_retried_step_reattaches_to_its_running_job(cluster):
    c = _client(cluster)
    c.submit(_job())
    again = c.submit(_job())  # 409 → attach, not a second job
    assert again["metadata"]["name"] == "dinoflow-r1-pretrain"
    assert [m for m, _ in cluster.requests].count("POST") == 2 and len(cluster.jobs) == 1


def test_a_retried_step_replaces_a_failed_job(cluster):
    cluster.outcome["dinoflow-r1-pretrain"] = "Failed"
    c = _client(cluster)
    c.submit(_job())
    with pytest.raises(TrainJobFailed):
        c.wait("dinoflow-r1-pretrain", poll=0.0)
    cluster.outcome["dinoflow-r1-pretrain"] = "Complete"
    c.submit(_job())
    assert ("DELETE", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/dinoflow/trainjobs/dinoflow-r1-pretrain") in cluster.requests
    assert c.wait("dinoflow-r1-pretrain", poll=0.0).phase == "Complete"


def test_timeout_and_vanished_jobs_fail(cluster):
    cluster.polls = 10**6
    clock = iter(range(0, 10**6, 100))
    c = TrainJobClient("dinoflow", api_client(cluster.host), sleep=lambda s: None, clock=lambda: next(clock))
    c.submit(_job())
    with pytest.raises(TrainJobFailed, match="did not finish within"):
        c.wait("dinoflow-r1-pretrain", timeout=250, poll=0.0)
    with pytest.raises(TrainJobFailed, match="disappeared"):
        c.wait("no-such-job", poll=0.0)


def test_job_state_reads_conditions():
    assert job_state({}).phase == "Pending"
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}, {"type": "Failed", "status": "False"}]}}
    assert job_state(done).phase == "Complete"


def test_training_step_stages_data_through_the_shared_volume(cluster, tmp_path, monkeypatch):
    """num_nodes > 1: inputs are copied to the shared dir, the TrainJob runs, outputs come back."""
    from dinoflow.launch.training import LaunchOptions, run_training_step

    curated = tmp_path / "artifacts" / "curated"
    curated.mkdir(parents=True)
    (curated / "shard-000000.tar").write_bytes(b"shard")
    shared = tmp_path / "shared"
    shared.mkdir()
    teacher_out, csv_out = tmp_path / "artifacts" / "teacher", tmp_path / "artifacts" / "pretrain.csv"

    def trainer(job):  # what the trainer pods would do: read the staged config, write out_dir
        cmd = job["spec"]["trainer"]["command"]
        cfg = yaml.safe_load(Path(cmd[cmd.index("-c") + 1]).read_text())
        assert (Path(cfg["pretrain"]["data"]) / "shard-000000.tar").read_bytes() == b"shard"
        out = Path(cfg["pretrain"]["out_dir"])
        out.mkdir(parents=True)
        (out / "backbone.pth").write_bytes(b"w")
        Path(cfg["pretrain"]["report_csv"]).write_text("step,loss\n")

    cluster.on_complete = trainer
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    summary = run_training_step(
        "pretrain", "", ["pretrain.train.max_steps=2"],
        inputs={"pretrain.data": str(curated)},
        outputs={"pretrain.out_dir": str(teacher_out), "pretrain.report_csv": str(csv_out)},
        opts=LaunchOptions(num_nodes=2, gpus_per_node=4, image="img:1", namespace="dinoflow",
                           shared_dir=str(shared), run_id="run-7", k8s_host=cluster.host, poll_s=0.0),
    )
    assert summary["launcher"] == "trainjob" and summary["state"] == "Complete"
    assert (teacher_out / "backbone.pth").read_bytes() == b"w" and csv_out.read_text() == "step,loss\n"
    job = next(iter(cluster.jobs.values()))
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 4
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert "valueFrom" in env["AWS_SECRET_ACCESS_KEY"]
    staged = yaml.safe_load((shared / job["metadata"]["name"] / "params.yaml").read_text())
    assert staged["pretrain"]["train"]["max_steps"] == 2


def test_training_step_without_shared_volume_says_what_to_mount(tmp_path):
    from dinoflow.launch.training import LaunchOptions, run_training_step

    with pytest.raises(DinoflowError, match="dinoflow-shared"):
        run_training_step("pretrain", "", [], inputs={}, outputs={},
                          opts=LaunchOptions(num_nodes=2, image="img", shared_dir=str(tmp_path / "missing")))
