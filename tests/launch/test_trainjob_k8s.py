"""The TrainJob client (submit / wait / fail / adopt / stream logs) against a STAND-IN Kubernetes
API server on loopback (tests/launch/standin_k8s.py): no Kubernetes API server can run on this
machine. The real `kubernetes` client talks to it over HTTP.
"""

from __future__ import annotations

import io

import pytest
import standin_k8s

from dinoflow.launch.k8s import TrainJobClient, TrainJobFailed, TrainJobPending, api_client, job_state, started
from dinoflow.launch.k8s_logs import LogFollower
from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob, owner_reference


@pytest.fixture
def cluster():
    c, server = standin_k8s.start()
    yield c
    server.shutdown()
    server.server_close()


def _job(name: str = "dinoflow-r1-pretrain", owner: dict | None = None) -> dict:
    return build_trainjob(
        TrainJobRequest(
            name=name,
            namespace="dinoflow",
            image="img:1",
            num_nodes=2,
            command=["torchrun", "-m", "dinoflow", "pretrain"],
            owner=owner,
        )
    )


def _client(cluster) -> TrainJobClient:
    return TrainJobClient("dinoflow", api_client(cluster.host), sleep=lambda s: None)


def test_submit_and_wait_until_complete(cluster):
    state = _client(cluster).run(_job(), poll=0.0, follow_logs=False)
    assert state.phase == "Complete"
    assert cluster.requests[0][:2] == ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/dinoflow/trainjobs")
    assert sum(1 for m, *_ in cluster.requests if m == "GET") == cluster.polls


def test_a_failed_job_fails_the_step_with_the_controllers_reason(cluster):
    cluster.outcome["dinoflow-r1-pretrain"] = "Failed"
    with pytest.raises(TrainJobFailed, match="JobFailed.*node-0 exited with code 1"):
        _client(cluster).run(_job(), poll=0.0, follow_logs=False)
    assert "dinoflow-r1-pretrain" not in cluster.jobs  # GPUs released


def test_a_retried_step_reattaches_to_its_running_job(cluster):
    c = _client(cluster)
    c.submit(_job())
    again = c.submit(_job())  # 409 → attach, not a second job
    assert again["metadata"]["name"] == "dinoflow-r1-pretrain"
    assert [m for m, *_ in cluster.requests].count("POST") == 2 and len(cluster.jobs) == 1


def test_a_retried_step_replaces_a_failed_job(cluster):
    cluster.outcome["dinoflow-r1-pretrain"] = "Failed"
    c = _client(cluster)
    c.submit(_job())
    with pytest.raises(TrainJobFailed):
        c.wait("dinoflow-r1-pretrain", poll=0.0)
    cluster.outcome["dinoflow-r1-pretrain"] = "Complete"
    c.submit(_job())
    assert (
        "DELETE",
        "/apis/trainer.kubeflow.org/v1alpha1/namespaces/dinoflow/trainjobs/dinoflow-r1-pretrain",
        "delete",
        "trainjobs",
    ) in cluster.requests
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
    with pytest.raises(TrainJobFailed, match="did not finish within"):
        c.run(_job("timed-out"), timeout=250, poll=0.0, follow_logs=False)
    assert "timed-out" not in cluster.jobs  # a job the step gave up on is deleted: its GPUs are freed


def test_job_state_reads_conditions():
    assert job_state({}).phase == "Pending"
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}, {"type": "Failed", "status": "False"}]}}
    assert job_state(done).phase == "Complete"


def test_a_retried_step_adopts_the_job_it_reattaches_to(cluster):
    """The job keeps the first attempt's pod as owner and gains the retry's: the garbage collector
    deletes it only when every step pod of the run is gone (a cancelled run), not when the first
    attempt's pod is (a preempted node)."""
    c = _client(cluster)
    c.submit(_job(owner=owner_reference("step-attempt-1", "uid-1")))
    c.submit(_job(owner=owner_reference("step-attempt-2", "uid-2")))
    refs = cluster.jobs["dinoflow-r1-pretrain"]["metadata"]["ownerReferences"]
    assert [(r["name"], r["uid"], r["kind"]) for r in refs] == [
        ("step-attempt-1", "uid-1", "Pod"),
        ("step-attempt-2", "uid-2", "Pod"),
    ]
    c.submit(_job(owner=owner_reference("step-attempt-2", "uid-2")))  # already an owner: no second patch
    assert [m for m, *_ in cluster.requests].count("PATCH") == 1


def test_the_rank0_log_is_streamed_into_the_step_log(cluster):
    cluster.polls = 3
    c = _client(cluster)
    c.submit(_job())
    out = io.StringIO()
    with LogFollower(api_client(cluster.host), "dinoflow", "dinoflow-r1-pretrain", out=out, poll_s=0.01):
        c.wait("dinoflow-r1-pretrain", poll=0.0)
        for _ in range(500):  # the follower thread reads while the step waits
            if out.getvalue().count("\n") >= 3:
                break
            import time

            time.sleep(0.01)
    lines = out.getvalue().splitlines()
    assert lines == [f"[dinoflow-r1-pretrain rank0] rank0 step {s} loss {1.0 / (s + 1):.3f}" for s in range(3)]
    assert ("pods/log", "get") in cluster.verbs() and ("pods", "list") in cluster.verbs()


def test_log_streaming_problems_never_fail_the_step(cluster):
    out = io.StringIO()
    with LogFollower(api_client("http://127.0.0.1:9"), "dinoflow", "nothing-here", out=out, poll_s=0.01) as f:
        pass  # nothing listens on port 9: the follower warns once and gives up quietly
    assert f.lines == 0 and out.getvalue() == ""


def test_a_job_that_never_starts_fails_the_step_with_the_schedulers_events(cluster):
    """No node can take the node pods (the stand-in's scheduler says Insufficient nvidia.com/gpu):
    past the pending timeout the step fails with those events (not another job's) and deletes the job."""
    cluster.unschedulable.add("dinoflow-r1-pretrain")
    clock = iter(range(0, 10**6, 100))
    c = TrainJobClient("dinoflow", api_client(cluster.host), sleep=lambda s: None, clock=lambda: next(clock))
    with pytest.raises(TrainJobPending, match=r"within 250 s") as err:
        c.run(_job(), poll=0.0, follow_logs=False, pending_timeout=250)
    text = str(err.value)
    assert text.count("FailedScheduling") == 2 and "Insufficient nvidia.com/gpu" in text and "(x3)" in text
    assert "someone-else" not in text
    assert "dinoflow-r1-pretrain" not in cluster.jobs  # the queued job is withdrawn: it holds no quota
    assert ("events", "list") in cluster.verbs()


def test_a_started_job_is_never_failed_by_the_pending_timeout(cluster):
    cluster.polls = 30
    clock = iter(range(0, 10**6, 100))
    c = TrainJobClient("dinoflow", api_client(cluster.host), sleep=lambda s: None, clock=lambda: next(clock))
    assert c.run(_job(), poll=0.0, follow_logs=False, pending_timeout=250).phase == "Complete"
    assert not any(r == "events" for *_, r in cluster.requests)


def test_started_counts_running_pods_not_pending_ones():
    pending = {"status": {"jobsStatus": [{"name": "node", "active": 2, "ready": 0, "succeeded": 0, "failed": 0}]}}
    assert job_state(pending).phase == "Running" and not started(pending)  # Job counts Pending pods as active
    assert started({"status": {"jobsStatus": [{"name": "node", "active": 2, "ready": 1}]}})
    assert not started({"status": {"conditions": [{"type": "Suspended", "status": "True"}]}})  # Kueue: not admitted
    assert started({"status": {"conditions": [{"type": "Failed", "status": "True"}]}})
