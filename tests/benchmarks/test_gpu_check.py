"""benchmarks/gpu/run.sh --dry-run: the prepared GPU check runs on a CPU with tiny shapes — every
configuration (FSDP2 on a 1-rank gloo group, aot_eager compilation, each checkpointing mode), the
phase clock, the profiler table, the MFU bookkeeping, the collection of the CUDA-only tests (which
skip without a device) — and what it leaves in $OUT fits what the device tool returns."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "benchmarks/gpu/run.sh"
pytestmark = pytest.mark.slow

# what the device tool brings back from $OUT
MAX_FILES, MAX_FILE, MAX_TOTAL, MAX_DEPTH = 8, 16 * 2**20, 64 * 2**20, 2


def _env(out: Path, **extra: str) -> dict:
    return {**os.environ, "OUT": str(out), "PYTHON": os.sys.executable, "OMP_NUM_THREADS": "1", **extra}


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(RUN), "--dry-run"], env=_env(out), capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES, files
    assert all(p.stat().st_size <= MAX_FILE for p in files) and sum(p.stat().st_size for p in files) <= MAX_TOTAL
    assert all(len(p.relative_to(out).parts) <= MAX_DEPTH + 1 for p in files)
    assert {p.name for p in files} == {"results.json", "bench.log", "kernels.txt", "tests.log", "summary.txt"}
    # the summary table is the very last output
    summary = (out / "summary.txt").read_text()
    assert r.stdout.endswith(summary) and "GPU check summary" in summary.splitlines()[0]
    assert summary.splitlines()[-1].startswith("bench rc 0; CUDA tests rc 0") and len(summary) < 6000
    record = json.loads((out / "results.json").read_text())
    assert [c["config"] for c in record["configs"]] == [
        "compiled",
        "compiled_selective_ac",
        "eager",
        "compiled_full_ac",
    ]
    for c in record["configs"]:
        assert "error" not in c and "skipped" not in c, c
        assert c["images_per_s"] > 0 and 0 < c["mfu_spec"] < c["mfu_measured"]
        assert set(c["phases_ms"]) == {
            "augmentation",
            "teacher_centering",
            "student_forward",
            "losses",
            "backward",
            "optimizer_ema",
        }
        assert all(v > 0 for v in c["phases_ms"].values())
        assert abs(sum(c["phases_ms"].values()) - c["step_ms"]) < 0.05 * c["step_ms"]
        assert c["memory_model_gib"]["total"] > c["memory_model_gib"]["activations"] > 0
    first = record["configs"][0]
    assert first["profile"]["sdpa"] == ["cpu_flash"]  # the CPU's attention kernel, found in the profile
    assert "Self CPU" in (out / "kernels.txt").read_text()
    assert "skipped" in (out / "tests.log").read_text() and "failed" not in (out / "tests.log").read_text()


def test_missing_wheels_name_the_carry(tmp_path):
    """Without pydantic and without the carried wheels, the check stops at once and says which
    carry the device call needs."""
    shadow = tmp_path / "shadow" / "pydantic"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('pydantic is absent on the GPU machine')\n")
    env = _env(tmp_path / "out", PYTHONPATH=str(tmp_path / "shadow"), DINOFLOW_GPU_WHEELS=str(tmp_path / "no-wheels"))
    r = subprocess.run(["bash", str(RUN)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert 'carry=["benchmarks/gpu/wheels"]' in r.stderr and "fetch_wheels.sh" in r.stderr
