"""benchmarks/train_throughput.py: the MFU denominator is measured in the step's own precision,
and the script runs end to end (tiny shapes), including its interleaved comparison."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_throughput as tt

TINY = [
    "--arch",
    "vit_pico",
    "--batch",
    "2",
    "--prototypes",
    "64",
    "--n-local",
    "2",
    "--steps",
    "1",
    "--peak-size",
    "256",
]


def test_peak_is_measured_in_the_steps_precision():
    """Regression: a bf16 CUDA step was divided by an fp32 matmul peak (MFU ~15× too high on an H100)."""
    assert tt.peak_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert tt.peak_dtype(torch.device("cuda", 0), "fp32") == torch.float32
    assert tt.peak_dtype(torch.device("cpu")) == torch.float32


def test_reports_throughput_mfu_and_memory(capsys):
    tt.main(TINY)
    out = capsys.readouterr().out
    for line in ("images/s", "MFU", "of the measured float32 peak", "peak RSS"):
        assert line in out


@pytest.mark.slow
def test_interleaved_comparison_and_activation_memory(capsys):
    src = str(Path(tt.__file__).resolve().parents[1] / "src")
    tt.main([*TINY, "--compare-with", src, "--repeats", "1"])
    out = capsys.readouterr().out
    # the same tree twice: one line per run, then the ratio of each tree against the first
    assert out.count(f"rep 1 {src}: median step") == 2 and f"speed vs {src}: wall" in out
    assert "CPU time" in out and "peak RSS" in out
    tt.main([*TINY, "--activation-memory"])
    out = capsys.readouterr().out
    assert out.count("MiB held after the student forward") == 3
