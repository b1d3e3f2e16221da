"""Kubeflow Trainer v2 `TrainJob` objects for multi-node training, validated against the Trainer API models.

A TrainJob names a runtime (`torch-distributed`, or the `dinoflow` runtime from `k8s/`) and says
how many nodes and processes per node run the trainer command. The runtime's torch ML policy
sets `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`,
which torchrun reads as its defaults, so the command is just `torchrun -m dinoflow <stage> ...`.

Per-job pod settings (GPU tolerations, node selector, the /dev/shm size, the pod labels the
network policies and Istio read) go through the TrainJob's `runtimePatches` (Trainer >= 2.2): one
patch, owned by `PATCH_MANAGER`, on the runtime's `node` job's pod template, so they hold for the
stock `torch-distributed` runtime too. CPU and memory per node default in proportion to the GPUs
per node; the memory-backed /dev/shm counts against the node's memory limit, so it is sized inside
it. The job can carry an owner reference to the pipeline step pod that created it, so the
garbage collector deletes it once that pod is gone (a cancelled run), and an active deadline.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from dinoflow.errors import DinoflowError
from dinoflow.launch.k8s_labels import KUEUE_QUEUE_LABEL, NO_SIDECAR, STEP_LABEL

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "trainjobs"
DEFAULT_RUNTIME = "dinoflow-torch-distributed"  # k8s/base/pipeline/training-runtime.yaml
DEFAULT_RUNTIME_KIND = "TrainingRuntime"  # namespaced: it lives with the TrainJobs, in the pipeline namespace
NODE_JOB = "node"  # the runtime's replicated job (and container) that runs the trainer
PATCH_MANAGER = "dinoflow.launch"  # owner of our entry in spec.runtimePatches
SHM_VOLUME = "dshm"  # the runtime's memory-backed /dev/shm volume (k8s/base/pipeline/training-runtime.yaml)
# Per GPU on a node: 8 loader workers and the rank's own process want a core each, plus headroom;
# memory for decoded batches in flight and the rank's host copies. A CPU-only node gets one GPU's worth.
CPU_PER_GPU = 10
MEMORY_PER_GPU_GI = 64
SHM_FRACTION = 4  # /dev/shm defaults to a quarter of the node's memory (it is part of the limit)
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass
class TrainJobRequest:
    """What one multi-node training step asks the cluster for."""

    name: str
    namespace: str
    image: str
    command: list[str]
    num_nodes: int = 2
    gpus_per_node: int = 1
    cpu_per_node: str = ""  # "" = CPU_PER_GPU per GPU (node_resources)
    memory_per_node: str = ""  # "" = MEMORY_PER_GPU_GI per GPU
    shm_per_node: str = ""  # "" = a SHM_FRACTION of memory_per_node
    queue_name: str = ""  # a Kueue LocalQueue; "" = not queued through Kueue
    runtime: str = DEFAULT_RUNTIME
    runtime_kind: str = DEFAULT_RUNTIME_KIND
    env: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    gpu_resource: str = "nvidia.com/gpu"
    active_deadline_seconds: int | None = None
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    owner: dict[str, Any] | None = None  # an ownerReference (owner_reference(...))
    image_pull_secrets: list[str] = field(default_factory=list)  # secret names the node pods pull with


def job_name(*parts: str, max_len: int = 52) -> str:
    """A DNS-1035 name from free text (pipeline run id + stage), short enough for derived pod names."""
    text = "-".join(p for p in parts if p).lower()
    text = re.sub(r"[^a-z0-9-]+", "-", text).strip("-")
    text = re.sub(r"-{2,}", "-", text)
    if not text or not text[0].isalpha():
        text = "dinoflow-" + text
    if len(text) > max_len:  # keep it unique: a cut alone could merge two stages of one run
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        text = text[: max_len - 9].rstrip("-") + "-" + digest
    return text


def owner_reference(pod_name: str, pod_uid: str) -> dict[str, Any]:
    """An ownerReference to a Pod (the pipeline step). Not a controller reference, and
    blockOwnerDeletion false: deleting the pod never waits for the job, and setting it needs no
    `delete` permission on pods."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod_name,
        "uid": pod_uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }


def _quantity(value: str, what: str) -> Any:
    from kubernetes.utils.quantity import parse_quantity

    try:
        q = parse_quantity(value)
    except ValueError:
        raise DinoflowError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 80, 500m, 640Gi)") from None
    if q <= 0:
        raise DinoflowError(f"{what} must be positive, got {value!r}")
    return q


def node_resources(gpus_per_node: int, cpu: str = "", memory: str = "", shm: str = "") -> tuple[str, str, str]:
    """(cpu, memory, shm) of one node pod: each given value kept, each empty one in proportion to
    the GPUs per node. /dev/shm is memory-backed and counts against the memory limit: it must
    leave the processes room, so it may take at most half of it."""
    units = max(int(gpus_per_node), 1)
    cpu = str(cpu) if cpu else str(CPU_PER_GPU * units)
    memory = str(memory) if memory else f"{MEMORY_PER_GPU_GI * units}Gi"
    _quantity(cpu, "cpu_per_node")
    mem_q = _quantity(memory, "memory_per_node")
    if not shm:
        shm = f"{max(int(mem_q / SHM_FRACTION) // 2**20, 64)}Mi"
    if _quantity(shm, "shm_per_node") * 2 > mem_q:
        raise DinoflowError(
            f"shm_per_node {shm} is more than half of memory_per_node {memory}: /dev/shm is memory-backed "
            "and counts against the node's memory limit; raise memory_per_node or lower shm_per_node"
        )
    return cpu, memory, shm


def node_pod_patch(
    tolerations: Sequence[Mapping[str, Any]],
    node_selector: Mapping[str, str],
    shm_size: str = "",
    image_pull_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """The `runtimePatches` entry for every node pod: the step label the network policies admit,
    no Istio sidecar (label and annotation), tolerations / a node selector, /dev/shm sized, and the
    image pull secrets of a private registry."""
    pod: dict[str, Any] = {}
    if image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": str(name)} for name in image_pull_secrets]
    if tolerations:
        pod["tolerations"] = [dict(t) for t in tolerations]
    if node_selector:
        pod["nodeSelector"] = {str(k): str(v) for k, v in node_selector.items()}
    if shm_size:
        pod["volumes"] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}]
        pod["containers"] = [{"name": NODE_JOB, "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]}]
    meta = {"labels": {**STEP_LABEL, **NO_SIDECAR}, "annotations": dict(NO_SIDECAR)}
    job = {"name": NODE_JOB, "template": {"spec": {"template": {"metadata": meta, "spec": pod}}}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}


def env_value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def env_from_secret(name: str, secret: str, key: str) -> dict[str, Any]:
    """An env var read from a Kubernetes secret (credentials never appear in the TrainJob)."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def build_trainjob(req: TrainJobRequest) -> dict[str, Any]:
    """The TrainJob object as a plain dict (ready for the Kubernetes API); validated before return."""
    if not _NAME_RE.match(req.name) or len(req.name) > 63:
        raise DinoflowError(f"TrainJob name {req.name!r} is not a DNS-1035 label; build it with job_name(...)")
    if req.num_nodes < 1:
        raise DinoflowError(f"num_nodes must be >= 1, got {req.num_nodes}")
    if req.gpus_per_node < 0:
        raise DinoflowError(f"gpus_per_node must be >= 0, got {req.gpus_per_node}")
    if not req.command:
        raise DinoflowError("the TrainJob needs a trainer command")
    if req.queue_name and (not _LABEL_VALUE_RE.match(req.queue_name) or len(req.queue_name) > 63):
        raise DinoflowError(f"Kueue queue name {req.queue_name!r} is not a valid label value (the LocalQueue's name)")
    cpu, memory, shm = node_resources(req.gpus_per_node, req.cpu_per_node, req.memory_per_node, req.shm_per_node)
    resources: dict[str, str] = {"cpu": cpu, "memory": memory}
    if req.gpus_per_node:
        resources[req.gpu_resource] = str(req.gpus_per_node)
    trainer: dict[str, Any] = {
        "image": req.image,
        "command": [str(c) for c in req.command],
        "numNodes": int(req.num_nodes),
        # one process per GPU; CPU nodes run one process each
        "numProcPerNode": int(max(req.gpus_per_node, 1)),
        "resourcesPerNode": {"requests": dict(resources), "limits": dict(resources)},
    }
    if req.env:
        trainer["env"] = [dict(e) for e in req.env]
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": req.runtime_kind, "name": req.runtime},
        "trainer": trainer,
    }
    if req.active_deadline_seconds is not None:
        if req.active_deadline_seconds < 1:
            raise DinoflowError(f"the TrainJob deadline must be >= 1 s, got {req.active_deadline_seconds}")
        spec["activeDeadlineSeconds"] = int(req.active_deadline_seconds)
    spec["runtimePatches"] = [node_pod_patch(req.tolerations, req.node_selector, shm, req.image_pull_secrets)]
    labels = {"app.kubernetes.io/part-of": "dinoflow", **req.labels}
    if req.queue_name:
        labels[KUEUE_QUEUE_LABEL] = req.queue_name
    metadata: dict[str, Any] = {"name": req.name, "namespace": req.namespace, "labels": labels}
    if req.owner:
        metadata["ownerReferences"] = [dict(req.owner)]
    obj = {"apiVersion": API_VERSION, "kind": "TrainJob", "metadata": metadata, "spec": spec}
    validate_trainer_object(obj)
    return obj


# ---------------------------------------------------------------- validation

_KINDS = {
    "TrainJob": "TrainerV1alpha1TrainJob",
    "TrainingRuntime": "TrainerV1alpha1TrainingRuntime",
    "ClusterTrainingRuntime": "TrainerV1alpha1ClusterTrainingRuntime",
}


def _dropped_keys(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Keys present in `given` that the model did not keep (misspelt or unknown fields)."""
    out: list[str] = []
    if isinstance(given, Mapping):
        if not isinstance(parsed, Mapping):
            return [path or "<root>"]
        for k, v in given.items():
            if v is None:
                continue
            sub = f"{path}.{k}" if path else str(k)
            if k not in parsed:
                out.append(sub)
            else:
                out += _dropped_keys(v, parsed[k], sub)
    elif isinstance(given, Sequence) and not isinstance(given, (str, bytes)):
        if not isinstance(parsed, Sequence) or len(parsed) != len(given):
            return [path]
        for i, (g, p) in enumerate(zip(given, parsed)):
            out += _dropped_keys(g, p, f"{path}[{i}]")
    return out


def validate_trainer_object(obj: Mapping[str, Any]) -> Any:
    """Validate a TrainJob / (Cluster)TrainingRuntime against the `kubeflow-trainer-api` models.

    The generated models ignore unknown keys, so a misspelt field would pass silently; this
    parses, dumps back and rejects any key the model dropped. Returns the parsed model.
    """
    import kubeflow_trainer_api.models as models

    kind = obj.get("kind")
    if kind not in _KINDS:
        raise DinoflowError(f"not a Kubeflow Trainer object: kind {kind!r} (expected one of {', '.join(_KINDS)})")
    if obj.get("apiVersion") != API_VERSION:
        raise DinoflowError(f"{kind}: apiVersion must be {API_VERSION!r}, got {obj.get('apiVersion')!r}")
    cls = getattr(models, _KINDS[kind])
    try:
        parsed = cls.from_dict(dict(obj))
    except (ValidationError, ValueError, TypeError) as e:
        raise DinoflowError(f"{kind} does not validate against the Trainer API: {e}") from None
    dropped = _dropped_keys(obj, parsed.to_dict())
    if dropped:
        raise DinoflowError(f"{kind} has fields the Trainer API does not know: {', '.join(dropped)}")
    return parsed
