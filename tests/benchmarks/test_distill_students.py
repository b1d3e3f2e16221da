"""benchmarks/distill_students.py runs end to end on tiny settings and reports its ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_students.py"


def test_reports_one_and_several_students_and_their_ratio():
    cmd = [sys.executable, str(SCRIPT), "--students", "2", "--batch", "4", "--steps", "1", "--repeats", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    step = re.search(r"repeat 1: 1 student ([0-9.]+) ms, 2 students ([0-9.]+) ms: ([0-9.]+)x", out)
    assert step is not None, out
    one, two, ratio = (float(x) for x in step.groups())
    assert one > 0 and two > 0 and abs(ratio - two / one) < 0.01 + 0.01 * ratio
    assert "median ratio" in out
