"""k8s/: every manifest validates against the Kubernetes schemas (kubernetes-validate, strict), the
Trainer runtime against the kubeflow-trainer-api models, and the kustomization builds.

`kubectl kustomize` is used when kubectl is installed; otherwise (and always, as a second check)
a small resolver builds the base: it loads every `resources:` file, applies the namespace and
labels, and checks names are unique. No cluster is needed for any of this.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dinoflow.launch.trainjob import validate_trainer_object

K8S = Path(__file__).resolve().parents[2] / "k8s"
K8S_VERSION = "1.30.0"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterTrainingRuntime"}


def resolve_kustomization(base: Path) -> list[dict]:
    """The subset of kustomize this base uses: resources, namespace, labels (without selectors)."""
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert set(kust) <= {"apiVersion", "kind", "namespace", "labels", "resources"}, "resolver: unsupported field"
    docs = []
    for res in kust["resources"]:
        path = base / res
        assert path.is_file(), f"kustomization lists {res}, which does not exist"
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    extra = {k: v for block in kust.get("labels", []) for k, v in block["pairs"].items()}
    for d in docs:
        meta = d.setdefault("metadata", {})
        if d["kind"] not in CLUSTER_SCOPED and "namespace" in kust:
            meta["namespace"] = kust["namespace"]
        meta.setdefault("labels", {}).update(extra)
    keys = [(d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate resources"
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return resolve_kustomization(K8S)


def test_every_yaml_file_is_in_the_kustomization():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_manifests_validate_against_their_schemas(docs):
    kinds = set()
    for d in docs:
        kinds.add(d["kind"])
        if d["apiVersion"].startswith("trainer.kubeflow.org/"):
            validate_trainer_object(d)
        else:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "Secret",
            "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "TrainingRuntime"} <= kinds


def test_a_broken_manifest_is_caught(docs):
    dep = next(d for d in docs if d["kind"] == "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["resorces"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) is not installed")
def test_kubectl_kustomize_builds_the_same_objects(docs):
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, docs))


def _pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "TrainingRuntime":
            for rj in d["spec"]["template"]["spec"]["replicatedJobs"]:
                yield d["metadata"]["name"], rj["template"]["spec"]["template"]["spec"]


def test_workloads_are_non_root_locked_down_and_bounded(docs):
    specs = list(_pod_specs(docs))
    assert len(specs) == 4  # minio, postgres, mlflow, training runtime
    for name, pod in specs:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"
            assert ":" in c["image"] and not c["image"].endswith(":latest"), f"{name}: pin the image tag"


def test_mlflow_server_uses_postgres_s3_and_health_probes(docs):
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dinoflow-mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(c["args"])
    assert "postgresql://" in cmd and "--artifacts-destination s3://" in cmd
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    pol = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert pol["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_secrets_are_templates_only(docs):
    for s in (d for d in docs if d["kind"] == "Secret"):
        for key, value in s["stringData"].items():
            if any(w in key for w in ("PASSWORD", "SECRET", "ACCESS_KEY", "ROOT_USER", "USERNAME")):
                assert value.startswith("REPLACE_ME"), f"{s['metadata']['name']}.{key} must be a placeholder"


def test_rbac_lets_the_pipeline_runner_manage_trainjobs(docs):
    role = next(d for d in docs if d["kind"] == "Role")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "get", "watch", "delete"} <= rules[("trainer.kubeflow.org", "trainjobs")]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"pipeline-runner", "dinoflow-pipeline-runner"} == {s["name"] for s in binding["subjects"]}


def test_training_runtime_matches_what_the_pipeline_asks_for(docs):
    from pipelines.dinov2_pipeline import SHARED_DIR, TRAINJOB_RUNTIME

    rt = next(d for d in docs if d["kind"] == "TrainingRuntime")
    assert rt["metadata"]["name"] == TRAINJOB_RUNTIME and "torch" in rt["spec"]["mlPolicy"]
    pod = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts[SHARED_DIR]]["persistentVolumeClaim"]["claimName"] == "dinoflow-shared"
    assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
