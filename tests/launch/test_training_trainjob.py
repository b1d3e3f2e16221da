"""A multi-node training step end to end against the STAND-IN Kubernetes API server
(tests/launch/standin_k8s.py; no Kubernetes API server can run on this machine): staging through
the shared volume, the TrainJob it submits (pod placement, owner, deadline, credentials by
reference), cleanup on success and not on failure, the run id from the environment, SIGTERM,
and that every API call it makes is granted by the Role in k8s/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import standin_k8s
import yaml

from dinoflow.config.pipeline_env import KFP_POD_NAME, KFP_POD_UID, PIPELINE_RUN_ID
from dinoflow.errors import DinoflowError
from dinoflow.launch.k8s import TrainJobFailed
from dinoflow.launch.options import LaunchOptions
from dinoflow.launch.training import run_training_step

GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
POOL = {"cloud.google.com/gke-nodepool": "h100-spot"}


@pytest.fixture
def cluster():
    c, server = standin_k8s.start()
    yield c
    server.shutdown()
    server.server_close()


@pytest.fixture
def step(tmp_path, monkeypatch):
    """A pretrain step's artifacts and shared volume, in a KFP step pod of run `run-7`."""
    curated = tmp_path / "artifacts" / "curated"
    curated.mkdir(parents=True)
    (curated / "shard-000000.tar").write_bytes(b"shard")
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(PIPELINE_RUN_ID, "run-7")
    monkeypatch.setenv(KFP_POD_NAME, "dinoflow-run-7-pretrain-driver")
    monkeypatch.setenv(KFP_POD_UID, "7d4f-uid")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://dinoflow-mlflow.dinoflow.svc.cluster.local:5000")
    return {
        "curated": curated,
        "shared": shared,
        "teacher": tmp_path / "artifacts" / "teacher",
        "csv": tmp_path / "artifacts" / "pretrain.csv",
    }


def _trainer(job):
    """What the trainer pods do: read the staged config and inputs, write checkpoints and outputs."""
    cmd = job["spec"]["trainer"]["command"]
    cfg = yaml.safe_load(Path(cmd[cmd.index("-c") + 1]).read_text())
    assert (Path(cfg["pretrain"]["data"]) / "shard-000000.tar").read_bytes() == b"shard"
    out = Path(cfg["pretrain"]["out_dir"])
    (out / "ckpt").mkdir(parents=True)
    (out / "backbone.pth").write_bytes(b"w")
    Path(cfg["pretrain"]["report_csv"]).write_text("step,loss\n")


def _run(cluster, step, **opts):
    return run_training_step(
        "pretrain",
        "",
        ["pretrain.train.max_steps=2"],
        inputs={"pretrain.data": str(step["curated"])},
        outputs={"pretrain.out_dir": str(step["teacher"]), "pretrain.report_csv": str(step["csv"])},
        opts=LaunchOptions(
            **{
                "num_nodes": 2,
                "gpus_per_node": 4,
                "image": "img:1",
                "namespace": "kubeflow",
                "shared_dir": str(step["shared"]),
                "k8s_host": cluster.host,
                "poll_s": 0.0,
                "tolerations": (GPU_TAINT,),
                "node_selector": POOL,
                "timeout_s": 3600.0,
                "gpu_resource": "amd.com/gpu",
                **opts,
            }
        ),
    )


def test_step_stages_through_the_shared_volume_and_cleans_it_on_success(cluster, step, capsys):
    cluster.polls = 4
    cluster.on_complete = _trainer
    summary = _run(cluster, step)
    assert summary["launcher"] == "trainjob" and summary["state"] == "Complete"
    assert (step["teacher"] / "backbone.pth").read_bytes() == b"w" and step["csv"].read_text() == "step,loss\n"
    assert list(step["shared"].iterdir()) == []  # <run>/<stage> removed once the outputs are copied back
    (job,) = [r for r in cluster.requests if r[0] == "POST"]
    assert job[1].endswith("/namespaces/kubeflow/trainjobs")
    assert "[pretrain-run-7 rank0] rank0 step 2 loss 0.333" in capsys.readouterr().out  # streamed into the step log


def test_the_trainjob_carries_placement_owner_deadline_and_no_credentials(cluster, step):
    seen = {}

    def trainer(job):
        seen.update({k: v for k, v in job.items() if k != "status"})  # what the step submitted
        _trainer(job)

    cluster.on_complete = trainer
    _run(cluster, step)
    from dinoflow.launch.trainjob import validate_trainer_object

    model = validate_trainer_object(seen)
    assert seen["metadata"]["name"] == "pretrain-run-7"  # from DINOFLOW_PIPELINE_RUN_ID, not an input
    (ref,) = seen["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["blockOwnerDeletion"]) == (
        "Pod",
        "dinoflow-run-7-pretrain-driver",
        "7d4f-uid",
        False,
    )
    assert model.spec.active_deadline_seconds == 3600
    pod = (
        model.spec.runtime_patches[0].training_runtime_spec.template.spec.replicated_jobs[0].template.spec.template.spec
    )
    assert [t.to_dict() for t in pod.tolerations] == [GPU_TAINT] and pod.node_selector == POOL
    env = {e["name"]: e for e in seen["spec"]["trainer"]["env"]}
    assert seen["spec"]["trainer"]["resourcesPerNode"]["limits"]["amd.com/gpu"] == "4"  # the accelerator asked for
    assert env["MLFLOW_TRACKING_URI"]["value"].endswith(":5000")
    for secret_var in ("DINOFLOW_S3_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[secret_var] and "secretKeyRef" in env[secret_var]["valueFrom"]
    assert seen["spec"]["trainer"]["command"][-1] == str(step["shared"] / "run-7" / "pretrain" / "params.yaml")


def test_a_failed_job_keeps_the_shared_directory_for_the_retry(cluster, step):
    cluster.outcome["pretrain-run-7"] = "Failed"
    with pytest.raises(TrainJobFailed, match="node-0 exited with code 1"):
        _run(cluster, step)
    root = step["shared"] / "run-7" / "pretrain"
    assert (root / "params.yaml").exists() and (root / "in" / "pretrain_data" / "shard-000000.tar").exists()
    assert "pretrain-run-7" not in cluster.jobs  # its GPUs are freed
    cluster.outcome.clear()
    cluster.on_complete = _trainer
    assert _run(cluster, step)["state"] == "Complete"  # the retry finds its directory and finishes
    assert not root.exists()


def test_multi_node_training_without_a_run_id_is_a_named_error(cluster, step, monkeypatch):
    monkeypatch.delenv(PIPELINE_RUN_ID)
    with pytest.raises(DinoflowError, match=PIPELINE_RUN_ID):
        _run(cluster, step)
    with pytest.raises(DinoflowError, match="not usable as a directory"):
        _run(cluster, step, run_id="../escape")
    assert cluster.requests == []  # nothing reached the cluster


def test_training_step_without_shared_volume_says_what_to_mount(tmp_path, monkeypatch):
    monkeypatch.setenv(PIPELINE_RUN_ID, "run-1")
    with pytest.raises(DinoflowError, match="dinoflow-shared"):
        run_training_step(
            "pretrain",
            "",
            [],
            inputs={},
            outputs={},
            opts=LaunchOptions(num_nodes=2, image="img", shared_dir=str(tmp_path / "missing")),
        )


def test_every_api_call_is_granted_by_the_role_in_k8s(cluster, step):
    """The calls the launcher really made (create, get, patch, delete, pods list, pods/log, events) are
    exactly what k8s/base/pipeline/rbac.yaml grants — no more, no less."""
    cluster.on_complete = _trainer
    cluster.outcome["pretrain-run-7"] = "Failed"
    with pytest.raises(TrainJobFailed):
        _run(cluster, step)  # create, get, delete, pods, pods/log
    cluster.outcome.clear()
    cluster.polls = 10**6
    from dinoflow.launch.k8s import TrainJobClient, api_client
    from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob, owner_reference

    client = TrainJobClient("kubeflow", api_client(cluster.host))
    req = dict(name="x", namespace="kubeflow", image="i:1", command=["torchrun"])
    client.submit(build_trainjob(TrainJobRequest(**req, owner=owner_reference("a", "1"))))
    client.submit(build_trainjob(TrainJobRequest(**req, owner=owner_reference("b", "2"))))  # patch
    cluster.unschedulable.add("y")
    clock = iter(range(0, 10**6, 100))
    client = TrainJobClient("kubeflow", api_client(cluster.host), sleep=lambda s: None, clock=lambda: next(clock))
    with pytest.raises(TrainJobFailed, match="FailedScheduling"):  # events list
        client.run(
            build_trainjob(TrainJobRequest(**{**req, "name": "y"})), poll=0, follow_logs=False, pending_timeout=1
        )
    rbac = (Path(__file__).resolve().parents[2] / "k8s" / "base" / "pipeline" / "rbac.yaml").read_text()
    role = next(d for d in yaml.safe_load_all(rbac) if d["kind"] == "Role")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert cluster.verbs() == granted


@pytest.mark.slow
def test_sigterm_deletes_the_trainjob_and_fails_the_step(cluster, step, tmp_path):
    """The step process gets SIGTERM (run cancelled) while its job runs: it deletes the job and exits non-zero."""
    cluster.polls = 10**6
    script = textwrap.dedent(f"""
        from dinoflow.launch.options import LaunchOptions
        from dinoflow.launch.training import run_training_step
        run_training_step("pretrain", "", [], inputs={{"pretrain.data": {str(step["curated"])!r}}},
                          outputs={{"pretrain.out_dir": {str(tmp_path / "t")!r}}},
                          opts=LaunchOptions(num_nodes=2, image="img:1", namespace="kubeflow",
                                             shared_dir={str(step["shared"])!r}, k8s_host={cluster.host!r}, poll_s=0.05))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while "pretrain-run-7" not in cluster.jobs:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # let it settle into waiting
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "TrainJobCancelled" in err and "SIGTERM" in err
    assert "pretrain-run-7" not in cluster.jobs and any(r[2] == "delete" for r in cluster.requests)
    assert (step["shared"] / "run-7" / "pretrain" / "params.yaml").exists()  # kept for a retry


def test_step_inputs_size_queue_and_bound_the_wait_of_the_trainjob(cluster, step):
    """The launch dict a component passes (LaunchOptions.from_launch) reaches the job: node
    CPU/memory/shm, the Kueue queue; and a job whose pods never start fails the step with the
    scheduler's events within the pending timeout."""
    opts = LaunchOptions.from_launch(
        {
            "num_nodes": 2,
            "gpus_per_node": 4,
            "accelerator_type": "nvidia.com/gpu",
            "image": "img:1",
            "trainjob_runtime": "dinoflow-torch-distributed",
            "trainjob_runtime_kind": "TrainingRuntime",
            "tolerations": [GPU_TAINT],
            "node_selector": POOL,
            "shared_dir": str(step["shared"]),
            "cpu_per_node": "48",
            "memory_per_node": "400Gi",
            "shm_per_node": "100Gi",
            "queue_name": "team-gpus",
            "pending_timeout_s": 1.0,
        }
    )
    assert (opts.cpu_per_node, opts.memory_per_node, opts.shm_per_node, opts.queue_name) == (
        "48",
        "400Gi",
        "100Gi",
        "team-gpus",
    )
    cluster.unschedulable.add("pretrain-run-7")
    fields = ("cpu_per_node", "memory_per_node", "shm_per_node", "queue_name", "pending_timeout_s")
    with pytest.raises(TrainJobFailed, match="Insufficient nvidia.com/gpu"):
        _run(cluster, step, **{k: getattr(opts, k) for k in fields})
    (post,) = [r for r in cluster.requests if r[0] == "POST"]
    assert "pretrain-run-7" not in cluster.jobs  # withdrawn: it holds no GPUs nor quota
    assert (step["shared"] / "run-7" / "pretrain" / "params.yaml").exists()  # kept for the retry


def test_node_resources_default_in_proportion_to_the_gpus(cluster, step):
    seen = {}
    cluster.on_complete = lambda job: (seen.update(job), _trainer(job))
    _run(cluster, step, gpus_per_node=8)
    res = seen["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert (res["cpu"], res["memory"]) == ("80", "512Gi")
