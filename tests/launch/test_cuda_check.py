"""The driver check before GPU training: the decision, the driver's version as the node reports it,
and the named error before a training step starts. No GPU here: the decision is a pure function,
and this machine's own torch (a CPU build) and driver (none) are checked as they are."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dinoflow.launch import cuda_check
from dinoflow.launch.cuda_check import CudaDriverTooOld, check_driver


@pytest.mark.parametrize(
    "cuda, driver",
    [("13.0", "580.65.06"), ("13.0", "590.1"), ("12.8", "525.60.13"), ("12.8", "580.82.07"), (None, None)],
)
def test_a_driver_that_runs_the_cuda_passes(cuda, driver):
    check_driver(cuda, driver)


@pytest.mark.parametrize(
    "cuda, driver, message",
    [
        ("13.0", "570.124.06", "older than 580.65.06, the minimum for CUDA 13.x"),
        ("12.8", "525.60.12", "older than 525.60.13"),
        ("13.0", None, "shows no NVIDIA driver"),
        ("14.0", "600.1", "does not know"),
    ],
)
def test_a_driver_too_old_for_the_cuda_is_named(cuda, driver, message):
    with pytest.raises(CudaDriverTooOld, match=message):
        check_driver(cuda, driver)


@pytest.mark.parametrize(
    "text, version",
    [
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.82.07  Wed Jul 23 2025\n", "580.82.07"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n", "580.65.06"),
    ],
)
def test_the_driver_version_is_read_from_the_kernel_module(tmp_path, monkeypatch, text, version):
    proc = tmp_path / "version"
    proc.write_text(text)
    monkeypatch.setattr(cuda_check, "PROC_VERSION", proc)
    assert cuda_check.driver_version() == version


def test_a_cuda_torch_on_a_node_without_driver_stops_the_training_step(monkeypatch, tmp_path):
    """The step refuses before any work when the node cannot run the image's CUDA."""
    import torch

    from dinoflow.launch.options import LaunchOptions
    from dinoflow.launch.training import run_training_step

    monkeypatch.setattr(torch.version, "cuda", "13.0")  # what the CUDA image's torch reports
    monkeypatch.setattr(cuda_check, "PROC_VERSION", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    with pytest.raises(CudaDriverTooOld, match="no NVIDIA driver"):
        run_training_step("pretrain", "{}", [], inputs={}, outputs={}, opts=LaunchOptions(gpus_per_node=1))


def test_the_command_line_check_execs_the_command_when_the_node_passes():
    """On this machine torch is a CPU build: nothing to check, the command runs."""
    out = subprocess.run(
        [sys.executable, "-m", "dinoflow.launch.cuda_check", sys.executable, "-c", "print('ran')"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ran", out.stderr
