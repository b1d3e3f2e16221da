"""Pod Security `restricted` (pod_security.py, the published profile's rules) on every pod template
the project renders (both overlays) or builds (a TrainJob's node pod: dinoflow's runtime with the
launcher's patch applied). One documented exception: the one-time Job that hands the shared volume
to uid 10001 runs as root with CAP_CHOWN (k8s/base/pipeline/prepare-shared-volume.yaml), and it
lives in the pipeline namespace, which is not ours to label `restricted`.
"""

from __future__ import annotations

import copy

import pytest
from k8s_build import K8S, OVERLAYS, build, find
from pod_security import pod_templates, violations

from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob

ROOT_JOB = "Job/dinoflow-prepare-shared-volume"
ROOT_JOB_VIOLATIONS = [
    "Capabilities: containers[chown] adds CHOWN",
    "Running as Non-root user: containers[chown].runAsUser 0",
    "Running as Non-root user: pod.runAsUser 0",
    "Running as Non-root: containers[chown]",
    "Running as Non-root: pod",
]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_pod_is_restricted_but_the_volume_preparation(overlay):
    found = {name: violations(spec, ann) for name, spec, ann in pod_templates(build(K8S / "overlays" / overlay))}
    assert len(found) >= 6
    assert found.pop(ROOT_JOB) == ROOT_JOB_VIOLATIONS  # root with CAP_CHOWN, nothing more
    # so it still runs where a profile namespace enforces `baseline` (root and CHOWN are allowed there)
    root_job = next(spec for name, spec, _ in pod_templates(build(K8S / "overlays" / overlay)) if name == ROOT_JOB)
    assert violations(root_job, level="baseline") == []
    assert found == {name: [] for name in found}


def _merge_by_name(base: list[dict], patch: list[dict]) -> list[dict]:
    out = {item["name"]: copy.deepcopy(item) for item in base}
    for item in patch:
        merged = out.setdefault(item["name"], {})
        for key, value in item.items():
            if key == "volumeMounts":
                mounts = {m["mountPath"]: m for m in merged.get(key, [])}
                mounts.update({m["mountPath"]: m for m in value})
                merged[key] = list(mounts.values())
            else:
                merged[key] = copy.deepcopy(value)
    return list(out.values())


def test_the_trainjob_node_pod_is_restricted():
    """dinoflow's runtime pod with the launcher's patch (tolerations, node selector, /dev/shm) merged
    by name, as the Trainer applies its runtime patches."""
    rt = find(build(K8S / "overlays" / "standalone"), "TrainingRuntime")
    pod = copy.deepcopy(rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"])
    job = build_trainjob(
        TrainJobRequest(
            name="j",
            namespace="kubeflow",
            image="i:1",
            command=["torchrun"],
            gpus_per_node=8,
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            node_selector={"pool": "gpu"},
        )
    )
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    patch_pod = patch["template"]["spec"]["template"]
    spec = pod["spec"]
    for key, value in patch_pod["spec"].items():
        spec[key] = _merge_by_name(spec.get(key, []), value) if key in ("containers", "volumes") else value
    annotations = {**pod.get("metadata", {}).get("annotations", {}), **patch_pod["metadata"]["annotations"]}
    assert {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "131072Mi"
    assert violations(spec, annotations) == []


def test_each_rule_is_checked():
    bad = {
        "hostNetwork": True,
        "securityContext": {"runAsNonRoot": False, "sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {
                    "privileged": True,
                    "runAsUser": 0,
                    "capabilities": {"add": ["SYS_ADMIN"]},
                    "seccompProfile": {"type": "Unconfined"},
                    "procMount": "Unmasked",
                    "seLinuxOptions": {"user": "system_u"},
                },
            }
        ],
    }
    apparmor = {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}
    rules = {v.split(":")[0] for v in violations(bad, apparmor)}
    baseline = {v.split(":")[0] for v in violations(bad, apparmor, level="baseline")}
    assert baseline == rules - {
        "Volume Types",
        "Privilege Escalation",
        "Running as Non-root",
        "Running as Non-root user",
    }
    assert rules == {
        "Host Namespaces",
        "Privileged Containers",
        "Capabilities",
        "HostPath Volumes",
        "Host Ports",
        "AppArmor",
        "SELinux",
        "Seccomp",
        "/proc Mount Type",
        "Sysctls",
        "Volume Types",
        "Privilege Escalation",
        "Running as Non-root",
        "Running as Non-root user",
    }
