"""Reachability on the rendered overlays: the connections the NetworkPolicies allow (computed by
netpol.py from `kubectl kustomize k8s/overlays/<kind>`; no cluster or CNI can run here) equal the
intended matrix exactly, in both overlays. Every connection into or out of namespace `dinoflow`
that is not in the matrix is denied: other pods of the pipeline namespace, a pod with the step
label in another namespace, MinIO's console, PostgreSQL from anything but MLflow.

The pods: the workloads the overlay renders; the TrainJob node pods as the launcher patches them
(on dinoflow's runtime and on the stock torch-distributed one); the KFP step pods with the labels
the compiled pipeline gives them; and what else lives around them (an unlabelled pod of the
pipeline namespace, a labelled pod of another namespace, kube-dns, NodeLocal DNSCache's
link-local address).
"""

from __future__ import annotations

import copy

import pytest
import yaml
from k8s_build import K8S, OVERLAYS, ROOT, SERVICES_NAMESPACE, build, find
from netpol import Cluster, endpoint, matches

from dinoflow.launch.k8s_labels import STEP_LABEL
from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob

DNS = [(53, "UDP", "dns"), (53, "TCP", "dns-tcp")]


@pytest.fixture(scope="module")
def step_labels(tmp_path_factory) -> dict[str, str]:
    """The labels every task pod of the compiled pipeline carries (the KFP platform spec)."""
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    assert main(["compile", "-c", str(ROOT / "pipelines" / "params.cluster.example.yaml"), "-o", str(out)]) == 0
    executors = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # the launch-options checks talk to no service and hold no credential: least privilege leaves
    # them outside the policies' admission label; every other step carries it
    checks = {n for n in executors if n.startswith("exec-launch-options")}
    assert checks and all("labels" not in executors[n].get("podMetadata", {}) for n in checks)
    per_task = [e.get("podMetadata", {}).get("labels", {}) for n, e in executors.items() if n not in checks]
    assert per_task and all(STEP_LABEL.items() <= labels.items() for labels in per_task), "every step is labelled"
    return dict(set.intersection(*(set(labels.items()) for labels in per_task)))


def _node_labels(runtime_labels: dict[str, str], runtime: str) -> dict[str, str]:
    job = build_trainjob(
        TrainJobRequest(name="j", namespace="x", image="i:1", command=["torchrun"], runtime=runtime, gpus_per_node=8)
    )
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    return {**runtime_labels, **patch["template"]["spec"]["template"]["metadata"]["labels"]}


def _workloads(docs: list[dict]) -> list:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            tpl = d["spec"]["template"]
            ports = [
                (p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
                for c in tpl["spec"]["containers"]
                for p in c.get("ports", [])
            ]
            out.append(endpoint(d["metadata"]["name"], d["metadata"]["namespace"], tpl["metadata"]["labels"], ports))
    return out


def _cluster(docs: list[dict], pipeline_ns: str, step_labels: dict[str, str]) -> Cluster:
    rt = find(docs, "TrainingRuntime")
    rt_labels = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"][
        "labels"
    ]
    endpoints = [
        *_workloads(docs),
        endpoint("kfp-step", pipeline_ns, step_labels),
        endpoint("trainjob-node", pipeline_ns, _node_labels(rt_labels, rt["metadata"]["name"])),
        endpoint("trainjob-node-stock-runtime", pipeline_ns, _node_labels({}, "torch-distributed")),
        endpoint("other-pod-in-pipeline-namespace", pipeline_ns, {"app": "notebook"}),
        endpoint("labelled-pod-in-other-namespace", "team-b", {**step_labels}),
        endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, DNS),
        endpoint("node-local-dns", None, {}, DNS),  # NodeLocal DNSCache: a link-local address, no pod
    ]
    return Cluster(endpoints, [d for d in docs if d["kind"] == "NetworkPolicy"])


def _intended() -> set[tuple[str, str, int, str]]:
    flows = set()
    for client in ("kfp-step", "trainjob-node", "trainjob-node-stock-runtime"):
        flows |= {(client, "dinoflow-mlflow", 5000, "TCP"), (client, "dinoflow-minio", 9000, "TCP")}
    flows |= {("dinoflow-mlflow", "dinoflow-postgres", 5432, "TCP"), ("dinoflow-mlflow", "dinoflow-minio", 9000, "TCP")}
    flows |= {("dinoflow-minio-users", "dinoflow-minio", 9000, "TCP")}
    for pod in ("dinoflow-mlflow", "dinoflow-minio-users"):  # the pods of `dinoflow` that resolve names
        flows |= {(pod, dns, 53, proto) for dns in ("kube-dns", "node-local-dns") for proto in ("UDP", "TCP")}
    return flows


def _touching_dinoflow(cluster: Cluster) -> set[tuple[str, str, int, str]]:
    ns = {e.name: e.namespace for e in cluster.endpoints}
    return {f for f in cluster.flows() if SERVICES_NAMESPACE in (ns[f[0]], ns[f[1]])}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_allowed_flows_are_exactly_the_intended_ones(overlay, step_labels):
    pipeline_ns, _ = OVERLAYS[overlay]
    cluster = _cluster(build(K8S / "overlays" / overlay), pipeline_ns, step_labels)
    assert _touching_dinoflow(cluster) == _intended()


def test_a_policy_that_admits_the_whole_pipeline_namespace_is_caught(step_labels):
    """Drop the step-label condition from MinIO's ingress (the namespace alone): the matrix grows
    by the pipeline namespace's other pods, and the comparison fails."""
    docs = build(K8S / "overlays" / "standalone")
    policy = find(docs, "NetworkPolicy", "dinoflow-minio")
    for peer in policy["spec"]["ingress"][0]["from"]:
        if "namespaceSelector" in peer:
            del peer["podSelector"]
    extra = _touching_dinoflow(_cluster(docs, "kubeflow", step_labels)) - _intended()
    assert extra == {
        ("other-pod-in-pipeline-namespace", "dinoflow-minio", 9000, "TCP"),
        ("dinoflow-prepare-shared-volume", "dinoflow-minio", 9000, "TCP"),  # unlabelled: denied as it should be
    }


def test_dns_only_to_kube_dns_pods_misses_nodelocal_dns(step_labels):
    docs = build(K8S / "overlays" / "standalone")
    policy = find(docs, "NetworkPolicy", "dinoflow-mlflow")
    dns_rule = next(r for r in policy["spec"]["egress"] if "to" not in r)
    dns_rule["to"] = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {}}
    ]
    missing = _intended() - _touching_dinoflow(_cluster(docs, "kubeflow", step_labels))
    assert missing == {("dinoflow-mlflow", "node-local-dns", 53, p) for p in ("UDP", "TCP")}


def test_the_model_follows_the_networkpolicy_semantics():
    """Peers in one list item AND their selectors; separate items OR them; no policy, no isolation."""
    a = endpoint("a", "ns1", {"role": "client"})
    b = endpoint("b", "ns2", {"role": "client"})
    c = endpoint("c", "ns2", {"role": "other"})
    srv = endpoint("srv", "ns2", {"app": "srv"}, [(80, "TCP", "http"), (81, "TCP", "admin")])
    and_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns1"}}}
    and_peer["podSelector"] = {"matchLabels": {"role": "client"}}
    pol = {
        "metadata": {"namespace": "ns2"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "srv"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [and_peer], "ports": [{"port": "http"}]}],
        },
    }
    cl = Cluster([a, b, c, srv], [pol])
    assert cl.flows() == {("a", "srv", 80, "TCP")}  # b: right labels, wrong namespace (AND)
    or_pol = copy.deepcopy(pol)
    or_pol["spec"]["ingress"][0]["from"] = [
        {"namespaceSelector": and_peer["namespaceSelector"]},
        {"podSelector": {"matchLabels": {"role": "client"}}},
    ]
    assert Cluster([a, b, c, srv], [or_pol]).flows() == {("a", "srv", 80, "TCP"), ("b", "srv", 80, "TCP")}
    assert len(Cluster([a, b, c, srv], []).flows()) == 6  # nobody isolated: everyone reaches both ports
    assert matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, {"y": "1"})
