"""`make images REGISTRY=…`: the first step of a cluster deploy builds both images for the user's
registry, pushes them and records their digests for `dinoflow pipeline compile --images-file`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dinoflow import __version__

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)


def test_images_needs_a_registry():
    out = _make("images")
    assert out.returncode != 0 and "set REGISTRY to your registry prefix" in out.stderr


def test_images_builds_pushes_and_records_digests():
    out = _make("-n", "images", "REGISTRY=reg.example/acme", "CUDA_VERSION=12.8")
    assert out.returncode == 0, out.stderr
    cmds = out.stdout
    cpu, train = f"reg.example/acme/dinoflow-cpu:{__version__}", f"reg.example/acme/dinoflow-cuda:{__version__}"
    assert f"docker build -f docker/Dockerfile.cpu -t {cpu}" in cmds
    assert f"docker build -f docker/Dockerfile -t {train} --build-arg CUDA_VERSION=12.8" in cmds
    serving = f"reg.example/acme/dinoflow-serving:{__version__}"
    assert f"docker build -f docker/Dockerfile.serving -t {serving}" in cmds
    assert all(f"docker push {ref}" in cmds for ref in (cpu, train, serving))
    assert "> build/images.json" in cmds and "kustomize edit set image dinoflow/dinoflow-cpu=" in cmds
