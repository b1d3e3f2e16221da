"""Every curation step gives bit-identical results on 1, 2 and 3 processes (torchrun, gloo) — slow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("dist_engine.py")


def _run(tmp_path: Path, nproc: int) -> dict:
    out = tmp_path / f"n{nproc}.json"
    head = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    )
    proc = subprocess.run([*head, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_engine_results_do_not_depend_on_the_number_of_processes(tmp_path):
    one = _run(tmp_path, 1)
    assert one["index"]["kind"] == "ivf" and len(one["graph"][0]) >= 1000  # the planted copies are linked
    assert sum(one["balanced"]) == 1000 and sum(one["closest"]) == 700
    for nproc in (2, 3):
        other = _run(tmp_path, nproc)
        for key in one:
            assert other[key] == one[key], f"{key} differs with {nproc} processes"
