"""Every Kubeflow Trainer object the project renders (k8s/ overlays) or builds (the launcher's
TrainJobs) is accepted by the released Trainer v2.3.0 CRDs (tests/k8s/crds/), schema and CEL
rules both, as an API server would decide on create. No Kubernetes API server can run here:
crd_schema.py plays its part, and the negative cases show that it rejects what one would.
"""

from __future__ import annotations

import copy

import pytest
from crd_schema import schemas, validate
from k8s_build import K8S, OVERLAYS, build

from dinoflow.launch.images import TRAIN_IMAGE
from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob, job_name, owner_reference

GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _trainer_objects(overlay: str) -> list[dict]:
    return [d for d in build(K8S / "overlays" / overlay) if d["apiVersion"].startswith("trainer.kubeflow.org/")]


def _job(**kw) -> dict:
    base = dict(
        name=job_name("pretrain", "5f3a9c1e-1234-4abc-8def-0123456789ab"),
        namespace="kubeflow-user-example-com",
        image=TRAIN_IMAGE,
        command=["torchrun", "-m", "dinoflow", "pretrain", "-c", "/mnt/dinoflow-shared/r/pretrain/params.yaml"],
        num_nodes=4,
        gpus_per_node=8,
    )
    return build_trainjob(TrainJobRequest(**{**base, **kw}))


LAUNCHER_JOBS = {
    "defaults": {},
    "cpu-nodes": {"gpus_per_node": 0, "num_nodes": 2},
    "placement": {
        "tolerations": [GPU_TAINT],
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
    },
    "kueue-owner-deadline": {
        "queue_name": "team-gpus",
        "owner": owner_reference("pretrain-abc-driver", "0b9e-uid"),
        "active_deadline_seconds": 7 * 24 * 3600,
    },
    "sized-by-hand": {"cpu_per_node": "96", "memory_per_node": "1Ti", "shm_per_node": "256Gi"},
    "cluster-runtime": {"runtime": "torch-distributed", "runtime_kind": "ClusterTrainingRuntime"},
    "private-registry": {"image_pull_secrets": ["regcred", "mirror-cred"]},
    "env-from-secrets": {
        "env": [
            {"name": "MLFLOW_TRACKING_URI", "value": "http://dinoflow-mlflow.dinoflow.svc.cluster.local:5000"},
            {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}},
        ]
    },
}


def test_the_vendored_crds_serve_the_trainer_kinds():
    assert {
        ("trainer.kubeflow.org/v1alpha1", k) for k in ("TrainJob", "TrainingRuntime", "ClusterTrainingRuntime")
    } <= set(schemas())


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rendered_trainer_objects_are_accepted(overlay):
    objects = _trainer_objects(overlay)
    assert [o["kind"] for o in objects] == ["TrainingRuntime"]
    for obj in objects:
        assert validate(obj) == [], obj["metadata"]["name"]


@pytest.mark.parametrize("case", sorted(LAUNCHER_JOBS))
def test_launcher_trainjobs_are_accepted(case):
    assert validate(_job(**LAUNCHER_JOBS[case])) == []


def _runtime() -> dict:
    return copy.deepcopy(_trainer_objects("standalone")[0])


def test_cel_rules_are_evaluated():
    """Mistakes only the CRDs' CEL rules catch (the pydantic models accept both)."""
    job = _job()
    job["metadata"]["name"] = "a" * 64  # a DNS label, but too long for a TrainJob
    assert validate(job) == ["<root>: metadata.name must be no more than 63 characters"]
    rt = _runtime()
    rt["spec"]["mlPolicy"]["mpi"] = {}  # two ML policies at once
    assert any("Only one of the policy can be configured" in e for e in validate(rt)), validate(rt)
    job = _job()
    job["spec"]["managedBy"] = "someone/else"
    assert any("managedBy" in e or "trainjob-controller" in e for e in validate(job)), validate(job)


def test_schema_mistakes_are_rejected():
    rt = _runtime()
    pod = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMount"] = []  # misspelt
    assert validate(rt) == [
        "spec.template.spec.replicatedJobs[0].template.spec.template.spec.containers[0].volumeMount: unknown field"
    ]
    job = _job()
    job["spec"]["trainer"]["numNodes"] = "4"
    assert validate(job) == ["spec.trainer.numNodes: expected integer, got str"]
    job = _job()
    del job["spec"]["runtimeRef"]["name"]
    assert validate(job) == ["spec.runtimeRef.name: required"]
    job = _job()
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "not a label value"
    assert validate(job) == ["metadata.labels.kueue.x-k8s.io/queue-name: bad value 'not a label value'"]
