"""TrainJob objects: built by the launcher, validated against the kubeflow-trainer-api models."""

from __future__ import annotations

import copy

import pytest

from dinoflow.errors import DinoflowError
from dinoflow.launch.images import TRAIN_IMAGE
from dinoflow.launch.k8s_labels import KUEUE_QUEUE_LABEL, STEP_LABEL
from dinoflow.launch.trainjob import (
    NODE_JOB,
    TrainJobRequest,
    build_trainjob,
    env_from_secret,
    job_name,
    node_resources,
    owner_reference,
    validate_trainer_object,
)


def _req(**kw) -> TrainJobRequest:
    base = dict(
        name="dinoflow-run1-pretrain",
        namespace="dinoflow",
        image=TRAIN_IMAGE,
        command=["torchrun", "-m", "dinoflow", "pretrain", "-c", "/mnt/s/params.yaml"],
        num_nodes=4,
        gpus_per_node=8,
    )
    base.update(kw)
    return TrainJobRequest(**base)


def test_trainjob_validates_and_carries_the_request():
    job = build_trainjob(
        _req(env=[env_from_secret("DINOFLOW_S3_ACCESS_KEY_ID", "dinoflow-s3", "DINOFLOW_S3_ACCESS_KEY_ID")])
    )
    model = validate_trainer_object(job)
    t = model.spec.trainer
    assert (t.num_nodes, t.num_proc_per_node) == (4, 8)
    assert (model.spec.runtime_ref.kind, model.spec.runtime_ref.name) == (
        "TrainingRuntime",
        "dinoflow-torch-distributed",
    )
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert job["spec"]["trainer"]["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "dinoflow-s3",
        "key": "DINOFLOW_S3_ACCESS_KEY_ID",
    }
    assert "value" not in job["spec"]["trainer"]["env"][0]  # credentials by reference only


def test_cpu_nodes_run_one_process_and_request_no_gpu():
    job = build_trainjob(_req(gpus_per_node=0, num_nodes=2))
    assert job["spec"]["trainer"]["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["requests"]


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("spec", "trainer", "numNodes"), "four", "numNodes"),
        (("spec", "trainer", "numNode"), 4, r"spec\.trainer\.numNode"),  # misspelt: the model would drop it silently
        (("spec", "runtimeRef"), {"kind": "ClusterTrainingRuntime"}, "name"),  # required field missing
    ],
)
def test_invalid_trainjobs_are_rejected(path, value, match):
    job = copy.deepcopy(build_trainjob(_req()))
    node = job
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(DinoflowError, match=match):
        validate_trainer_object(job)


def test_bad_requests_fail_before_reaching_the_cluster():
    with pytest.raises(DinoflowError, match="DNS-1035"):
        build_trainjob(_req(name="Bad_Name"))
    with pytest.raises(DinoflowError, match="num_nodes"):
        build_trainjob(_req(num_nodes=0))
    with pytest.raises(DinoflowError, match="kind"):
        validate_trainer_object({"apiVersion": "v1", "kind": "Pod"})


def test_job_name_is_a_dns_label():
    name = job_name("dinoflow", "5F3A_Run/ID.xyz" * 5, "pretrain")
    assert len(name) <= 52 and name[0].isalpha() and name == name.lower()
    assert all(c.isalnum() or c == "-" for c in name) and not name.endswith("-")
    assert job_name("123", "distill").startswith("dinoflow-")
    run = "5f3a9c1e-1234-4abc-8def-0123456789ab" * 2  # long ids: cut, but two stages never collide
    assert job_name("pretrain", run) != job_name("pretrain", run + "x") and len(job_name("pretrain", run)) == 52


GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_tolerations_and_node_selector_reach_the_node_pod_template():
    job = build_trainjob(
        _req(tolerations=[GPU_TAINT], node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"})
    )
    model = validate_trainer_object(job)  # field names checked against the Trainer API models
    (patch,) = model.spec.runtime_patches
    (rjob,) = patch.training_runtime_spec.template.spec.replicated_jobs
    pod = rjob.template.spec.template.spec
    assert rjob.name == NODE_JOB and patch.manager
    assert [t.to_dict() for t in pod.tolerations] == [GPU_TAINT]
    assert pod.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    (bare,) = build_trainjob(_req())["spec"]["runtimePatches"]  # no placement asked: none patched in
    bare_pod = bare["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert "tolerations" not in bare_pod["spec"] and "nodeSelector" not in bare_pod["spec"]


def test_owner_reference_and_deadline_validate():
    job = build_trainjob(_req(owner=owner_reference("pretrain-xyz-driver", "0b9e-uid"), active_deadline_seconds=3600))
    model = validate_trainer_object(job)
    (ref,) = model.metadata.owner_references
    assert (ref.api_version, ref.kind, ref.name, ref.uid) == ("v1", "Pod", "pretrain-xyz-driver", "0b9e-uid")
    assert ref.block_owner_deletion is False and ref.controller is False
    assert model.spec.active_deadline_seconds == 3600
    with pytest.raises(DinoflowError, match="deadline"):
        build_trainjob(_req(active_deadline_seconds=0))


def _node_pod(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == NODE_JOB
    return rjob["template"]["spec"]["template"]


def test_node_pods_get_no_istio_sidecar_and_the_step_label():
    """Whatever runtime the job names (the stock torch-distributed one has neither), its node pods
    say `sidecar.istio.io/inject: "false"` as a label (recent Istio) and an annotation (older
    Istio), and carry the label the network policies admit."""
    for runtime in ("dinoflow-torch-distributed", "torch-distributed"):
        pod = _node_pod(build_trainjob(_req(runtime=runtime, runtime_kind="ClusterTrainingRuntime")))
        assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
        assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        assert STEP_LABEL.items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize(
    "gpus,cpu,memory,shm",
    [(0, "10", "64Gi", "16384Mi"), (1, "10", "64Gi", "16384Mi"), (8, "80", "512Gi", "131072Mi")],
)
def test_node_resources_grow_with_the_gpus_and_shm_fits_inside_memory(gpus, cpu, memory, shm):
    job = build_trainjob(_req(gpus_per_node=gpus))
    res = job["spec"]["trainer"]["resourcesPerNode"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == cpu
    assert res["requests"]["memory"] == res["limits"]["memory"] == memory
    pod = _node_pod(job)["spec"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]
    assert pod["containers"] == [{"name": NODE_JOB, "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}]


def test_given_node_resources_are_kept_and_bad_ones_named():
    assert node_resources(8, "96", "1Ti", "200Gi") == ("96", "1Ti", "200Gi")
    assert node_resources(2, memory="100Gi") == ("20", "100Gi", "25600Mi")
    with pytest.raises(DinoflowError, match="shm_per_node 40Gi is more than half of memory_per_node 64Gi"):
        build_trainjob(_req(gpus_per_node=1, shm_per_node="40Gi"))
    with pytest.raises(DinoflowError, match="memory_per_node '32 GB' is not a Kubernetes quantity"):
        build_trainjob(_req(memory_per_node="32 GB"))
    with pytest.raises(DinoflowError, match="cpu_per_node must be positive"):
        build_trainjob(_req(cpu_per_node="0"))


def test_kueue_queue_name_is_a_label_on_the_trainjob():
    job = build_trainjob(_req(queue_name="team-vision-gpus"))
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-vision-gpus"
    assert KUEUE_QUEUE_LABEL not in build_trainjob(_req())["metadata"]["labels"]
    with pytest.raises(DinoflowError, match="queue name"):
        build_trainjob(_req(queue_name="no spaces/allowed"))


def test_image_pull_secrets_reach_the_node_pods(monkeypatch):
    """A run compiled with --image-pull-secret passes the names to its steps; the step that launches
    the TrainJob gives them to every node pod (they pull the same private image)."""
    from dinoflow.launch.k8s_labels import PULL_SECRETS_ENV
    from dinoflow.launch.training import pull_secrets

    monkeypatch.setenv(PULL_SECRETS_ENV, "regcred, mirror-cred,")
    assert pull_secrets() == ["regcred", "mirror-cred"]
    monkeypatch.delenv(PULL_SECRETS_ENV)
    assert pull_secrets() == []
    pod = _node_pod(build_trainjob(_req(image_pull_secrets=["regcred", "mirror-cred"])))
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
    assert "imagePullSecrets" not in _node_pod(build_trainjob(_req()))["spec"]
