"""The CUDA training image really builds (no GPU needed to build it): its torch has the CUDA of the
build argument, it runs as uid 10001 on a read-only root, its size is reported, and on a machine
without an NVIDIA driver the launch check stops with the named error.

Where the image's torch comes from here: PyTorch's own index is not reachable from this machine,
PyPI is, and PyPI's torch==2.13.0 for Linux x86-64 is the CUDA 13.0 build, so the test builds
CUDA_VERSION=13.0 from PyPI (TORCH_INDEX_URL). Skips, with the reason, only where no Docker engine
runs or the Debian base stand-in cannot be made (no root / debootstrap)."""

from __future__ import annotations

import subprocess

import pytest
from containers.engine import BASE_IMAGE, build, build_base_image, docker_client, project_context

pytestmark = pytest.mark.containers
CUDA_VERSION = "13.0"
TAG = "dinoflow-test/dinoflow-cuda:build-check"
PYPI = "https://pypi.org/simple"  # PyPI's torch 2.13.0 (Linux x86-64) is the CUDA 13.0 build


def test_cuda_image_builds_with_the_cuda_of_its_build_argument(tmp_path_factory, record_property):
    client, why = docker_client()
    if client is None:
        pytest.skip(f"container tier: {why}")
    work = tmp_path_factory.mktemp("cuda-image")
    why = build_base_image(client, work)
    if why:
        pytest.skip(f"container tier: {why}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    build(
        client,
        project_context(work),
        "docker/Dockerfile",
        [TAG],
        {"BASE_IMAGE": BASE_IMAGE, "CUDA_VERSION": CUDA_VERSION, "TORCH_INDEX_URL": PYPI, "GIT_COMMIT": commit},
    )
    restricted = dict(user="10001:10001", read_only=True, tmpfs={"/tmp": ""}, cap_drop=["ALL"], network_mode="none")
    probe = "import os, torch; print(torch.version.cuda, os.environ['DINOFLOW_CUDA_VERSION'], os.getuid())"
    out = client.containers.run(TAG, ["python", "-c", probe], remove=True, **restricted).decode().split()
    assert out == [CUDA_VERSION, CUDA_VERSION, "10001"]
    size = client.images.get(TAG).attrs["Size"]
    record_property("cuda_image_bytes", size)
    print(f"\n{TAG} (CUDA {CUDA_VERSION}): {size / 2**30:.2f} GiB uncompressed")
    # no NVIDIA driver in this container: the launch check refuses with its named error
    container = client.containers.run(
        TAG, ["python", "-m", "dinoflow.launch.cuda_check", "true"], detach=True, **restricted
    )
    try:
        assert container.wait(timeout=300)["StatusCode"] == 1
        assert "CudaDriverTooOld" in container.logs().decode() and "no NVIDIA driver" in container.logs().decode()
    finally:
        container.remove(force=True)
