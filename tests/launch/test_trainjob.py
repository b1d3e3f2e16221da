"""TrainJob objects: built by the launcher, validated against the kubeflow-trainer-api models."""

from __future__ import annotations

import copy

import pytest

from dinoflow.errors import DinoflowError
from dinoflow.launch.trainjob import (
    TrainJobRequest, build_trainjob, env_from_secret, job_name, validate_trainer_object,
)


def _req(**kw) -> TrainJobRequest:
    base = dict(name="dinoflow-run1-pretrain", namespace="dinoflow", image="dinoflow/dinoflow-cuda:0.1.0",
                command=["torchrun", "-m", "dinoflow", "pretrain", "-c", "/mnt/s/params.yaml"],
                num_nodes=4, gpus_per_node=8)
    base.update(kw)
    return TrainJobRequest(**base)


def test_trainjob_validates_and_carries_the_request():
    job = build_trainjob(_req(env=[env_from_secret("AWS_ACCESS_KEY_ID", "dinoflow-s3", "AWS_ACCESS_KEY_ID")]))
    model = validate_trainer_object(job)
    t = model.spec.trainer
    assert (t.num_nodes, t.num_proc_per_node) == (4, 8)
    assert model.spec.runtime_ref.name == "torch-distributed"
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert job["spec"]["trainer"]["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "dinoflow-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert "value" not in job["spec"]["trainer"]["env"][0]  # credentials by reference only


def test_cpu_nodes_run_one_process_and_request_no_gpu():
    job = build_trainjob(_req(gpus_per_node=0, num_nodes=2))
    assert job["spec"]["trainer"]["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["requests"]


@pytest.mark.parametrize("path,value,match", [
    (("spec", "trainer", "numNodes"), "four", "numNodes"),
    (("spec", "trainer", "numNode"), 4, r"spec\.trainer\.numNode"),      # misspelt: the model would drop it silently
    (("spec", "runtimeRef"), {"kind": "ClusterTrainingRuntime"}, "name"),  # required field missing
])
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
