"""Structural lint of docker/: pinned base tags, a non-root USER, an init process, one CUDA version,
and a context that leaves local state out. The CPU image is also built and run for real by the
container tier (tests/containers/); the CUDA image cannot be built here (no GPU, no CUDA wheels)."""

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
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    for image in froms:
        name = image.split()[0]
        if name.startswith("${") and name.endswith("}"):
            name = args[name[2:-1]]  # a base given as a build argument: check its default
        tag = name.rsplit(":", 1)[-1] if ":" in name.split("/")[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {name}"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final USER must be non-root"
    assert [op for op, _ in ins].index("USER") > max(i for i, (op, _) in enumerate(ins) if op == "RUN"), (
        "USER after the last RUN"
    )
    run = " ".join(rest for op, rest in ins if op == "RUN")
    assert re.search(r"torch==\$\{TORCH_VERSION\}", run) and any(
        op == "ARG" and rest.startswith("TORCH_VERSION=2.") for op, rest in ins
    )
    assert "-c constraints.txt" in run, "project installed against the pinned constraints"
    copies = " ".join(rest for op, rest in ins if op == "COPY")
    for needed in ("src", "components", "pipelines", "docker/entrypoint.sh"):
        assert needed in copies, f"{path.name} does not copy {needed}"
    entry = next(rest for op, rest in ins if op == "ENTRYPOINT")
    assert "tini" in entry, "PID 1 must reap children (torchrun workers)"


def test_training_image_has_one_cuda_version_chosen_by_a_build_argument():
    """The torch wheels bring the image's only CUDA: no base image or extra wheel may bring another.
    CUDA_VERSION picks PyTorch's index for it, the build fails unless torch reports exactly that
    version, and the image records it for the launch check (dinoflow.launch.cuda_check)."""
    text = DOCKERFILES[0].read_text()
    ins = _instructions(DOCKERFILES[0])
    assert "nvidia/cuda" not in text and "cu12" not in text and "cu11" not in text
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    assert args["CUDA_VERSION"] == "13.0" and args["TORCH_INDEX_URL"] == ""
    run = " ".join(rest for op, rest in ins if op == "RUN")
    assert 'https://download.pytorch.org/whl/cu$(echo "${CUDA_VERSION}" | tr -d .)' in run
    assert "v == sys.argv[1]" in run and '"${CUDA_VERSION}"' in run, "the build checks the CUDA it got"
    env = " ".join(rest for op, rest in ins if op == "ENV")
    assert "DINOFLOW_CUDA_VERSION=${CUDA_VERSION}" in env
    assert re.search(r"driver >= 580", text), "the Dockerfile states the driver it needs"


def test_cpu_image_uses_the_cpu_torch_wheel():
    ins = _instructions(DOCKERFILES[1])
    run = " ".join(rest for op, rest in ins if op == "RUN")
    assert any(op == "ARG" and rest == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" for op, rest in ins)
    assert "+cpu" in run and "psycopg2-binary" in run


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_caches_and_home_are_env_not_entrypoint(path):
    """Kubernetes' `command` replaces the ENTRYPOINT: what a read-only pod needs must be ENV."""
    env = " ".join(rest for op, rest in _instructions(path) if op == "ENV")
    for var in ("HOME=/tmp", "MPLCONFIGDIR=/tmp/", "XDG_CACHE_HOME=/tmp/", "DINOFLOW_GIT_COMMIT=${GIT_COMMIT}"):
        assert var in env, var


def test_dockerignore_keeps_local_state_and_secrets_out():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data", "models", "mlruns", "mlflow.db", ".env"} <= ignored
    assert not {"src", "components", "pipelines", "docker"} & ignored


def test_entrypoint_execs_the_command():
    text = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert text.startswith("#!/bin/sh") and 'exec "$@"' in text and "set -eu" in text
