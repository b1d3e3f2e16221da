"""TrainJob objects: built by the launcher, validated against the kubeflow-trainer-api models."""

from __future__ import annotations

import copy

import pytest

from dinoflow.errors import DinoflowError
from dinoflow.launch.images import TRAIN_IMAGE
from dinoflow.launch.trainjob import (
    NODE_JOB,
    TrainJobRequest,
    build_trainjob,
    env_from_secret,
    job_name,
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
    assert "runtimePatches" not in build_trainjob(_req())["spec"]  # nothing to patch: no patch


def test_owner_reference_and_deadline_validate():
    job = build_trainjob(_req(owner=owner_reference("pretrain-xyz-driver", "0b9e-uid"), active_deadline_seconds=3600))
    model = validate_trainer_object(job)
    (ref,) = model.metadata.owner_references
    assert (ref.api_version, ref.kind, ref.name, ref.uid) == ("v1", "Pod", "pretrain-xyz-driver", "0b9e-uid")
    assert ref.block_owner_deletion is False and ref.controller is False
    assert model.spec.active_deadline_seconds == 3600
    with pytest.raises(DinoflowError, match="deadline"):
        build_trainjob(_req(active_deadline_seconds=0))
