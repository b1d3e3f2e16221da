"""Which connections Kubernetes NetworkPolicies allow, computed from manifests (the semantics of
networking.k8s.io/v1 as the API reference states them); the stand-in for a CNI, since no cluster
can run here.

A pod is isolated for ingress (egress) once a policy of its namespace selects it with that
policy type; an isolated pod admits only what some selecting policy's rule allows. A connection
src → dst:port/protocol happens when src's egress AND dst's ingress allow it. Peers: podSelector
(the policy's namespace), namespaceSelector (all pods of those namespaces), both (pods matching in
namespaces matching), none (`to`/`from` absent: everything, off-cluster addresses included).
Ports: absent = all; a name resolves against the destination's container ports; protocol TCP by
default; endPort makes a range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

Labels = dict[str, str]


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an off-cluster address (namespace None), with what it listens on."""

    name: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[int, str, str], ...] = ()  # (port, protocol, name)

    @property
    def label_map(self) -> Labels:
        return dict(self.labels)


def endpoint(name: str, namespace: str | None, labels: Labels | None = None, ports: Iterable = ()) -> Endpoint:
    return Endpoint(name, namespace, tuple(sorted((labels or {}).items())), tuple(sorted(ports)))


def matches(selector: dict | None, labels: Labels) -> bool:
    """A LabelSelector (matchLabels AND every matchExpression); {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@dataclass
class Cluster:
    endpoints: list[Endpoint]
    policies: list[dict]
    namespace_labels: dict[str, Labels] = field(default_factory=dict)

    def ns_labels(self, ns: str) -> Labels:
        return {"kubernetes.io/metadata.name": ns, **self.namespace_labels.get(ns, {})}

    def _selecting(self, pod: Endpoint, direction: str) -> list[dict]:
        if pod.namespace is None:
            return []
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and matches(p["spec"].get("podSelector"), pod.label_map)
            and direction in _policy_types(p)
        ]

    def _peer_ok(self, peer: dict, other: Endpoint, policy_ns: str) -> bool:
        if "ipBlock" in peer:
            return other.namespace is None  # the manifests here use none; off-cluster only
        if other.namespace is None:
            return False
        if "namespaceSelector" in peer:
            if not matches(peer["namespaceSelector"], self.ns_labels(other.namespace)):
                return False
        elif other.namespace != policy_ns:
            return False
        return matches(peer.get("podSelector"), other.label_map)

    def _allows(self, direction: str, pod: Endpoint, other: Endpoint, port: tuple[int, str, str]) -> bool:
        policies = self._selecting(pod, direction)
        if not policies:
            return True  # not isolated in this direction
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        for p in policies:
            for rule in p["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer_ok(peer, other, p["metadata"]["namespace"]) for peer in peers):
                    continue
                if _port_ok(rule.get("ports"), port):
                    return True
        return False

    def allowed(self, src: Endpoint, dst: Endpoint, port: tuple[int, str, str]) -> bool:
        return self._allows("Egress", src, dst, port) and self._allows("Ingress", dst, src, port)

    def flows(self) -> set[tuple[str, str, int, str]]:
        """Every allowed (src, dst, port, protocol) over the ports each destination listens on."""
        return {
            (s.name, d.name, port[0], port[1])
            for s in self.endpoints
            if s.namespace is not None
            for d in self.endpoints
            if d is not s
            for port in d.ports
            if self.allowed(s, d, port)
        }


def _policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if "egress" in spec else [])


def _port_ok(rules: list[dict] | None, port: tuple[int, str, str]) -> bool:
    if not rules:
        return True
    number, protocol, name = port
    for r in rules:
        if r.get("protocol", "TCP") != protocol:
            continue
        want = r.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            if want == name:
                return True
            continue
        if want <= number <= r.get("endPort", want):
            return True
    return False
