"""Structural lint of docker/ (no Docker engine here, so the images cannot be built in tests):
pinned base tags, a non-root USER, an init process, and a context that leaves local state out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_complete(path):
    ins = _instructions(path)
    froms = [rest for op, rest in ins if op == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        name = image.split()[0]
        tag = name.rsplit(":", 1)[-1] if ":" in name.split("/")[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {name}"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and not users[-1].split(":")[0] in ("root", "0"), "the final USER must be non-root"
    assert [op for op, _ in ins].index("USER") > max(i for i, (op, _) in enumerate(ins) if op == "RUN"), "USER after the last RUN"
    run = " ".join(rest for op, rest in ins if op == "RUN")
    assert re.search(r"torch==\$\{TORCH_VERSION\}", run) and any(op == "ARG" and rest.startswith("TORCH_VERSION=2.") for op, rest in ins)
    assert "-c constraints.txt" in run, "project installed against the pinned constraints"
    copies = " ".join(rest for op, rest in ins if op == "COPY")
    for needed in ("src", "components", "pipelines", "params.yaml", "docker/entrypoint.sh"):
        assert needed in copies, f"{path.name} does not copy {needed}"
    entry = next(rest for op, rest in ins if op == "ENTRYPOINT")
    assert "tini" in entry, "PID 1 must reap children (torchrun workers)"


def test_training_image_has_cuda_and_faiss_gpu():
    ins = _instructions(DOCKERFILES[0])
    assert "cuda" in next(rest for op, rest in ins if op == "FROM")
    run = " ".join(rest for op, rest in ins if op == "RUN")
    assert "pip uninstall -y faiss-cpu" in run and "faiss-gpu-cu12==${FAISS_GPU_VERSION}" in run


def test_cpu_image_uses_the_cpu_torch_wheel():
    run = " ".join(rest for op, rest in _instructions(DOCKERFILES[1]) if op == "RUN")
    assert "download.pytorch.org/whl/cpu" in run and "psycopg2-binary" in run


def test_dockerignore_keeps_local_state_and_secrets_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "data", "models", "mlruns", "mlflow.db", ".env"} <= ignored
    assert not {"src", "components", "pipelines", "params.yaml", "docker"} & ignored


def test_entrypoint_execs_the_command():
    text = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert text.startswith("#!/bin/sh") and 'exec "$@"' in text and "set -eu" in text
