"""benchmarks/gpu/run.sh --dry-run: the prepared GPU check runs on a CPU with tiny shapes — every
configuration (compile and packing on and off, aot_eager compilation), the MFU bookkeeping, and
the collection of the CUDA-only tests (which skip without a device)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": str(Path(os.sys.executable)), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu/run.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and not [row for row in rows if "error" in row or "skipped" in row]
    assert {(row["compile"], row["pack"]) for row in rows} == {(c, p) for c in (True, False) for p in (True, False)}
    for row in rows:
        assert row["images_per_s"] > 0 and 0 < row["mfu_measured"] and 0 < row["mfu_spec"] < row["mfu_measured"]
    tests_log = (tmp_path / "tests.log").read_text()
    assert "skipped" in tests_log and "failed" not in tests_log
