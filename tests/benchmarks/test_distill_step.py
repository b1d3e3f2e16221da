"""benchmarks/distill_step.py runs end to end: this tree alone, and interleaved against a commit
through a temporary git worktree that it removes afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "distill_step.py"


def _worktrees() -> int:
    out = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True)
    return len(out.stdout.splitlines())


def test_times_this_tree_and_compares_with_a_commit_interleaved():
    alone = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], capture_output=True, text=True, check=True)
    assert re.search(r"distill step: [0-9.]+ ms, [0-9]+ images/s", alone.stdout)
    before = _worktrees()
    cmd = [sys.executable, str(SCRIPT), "--against", "HEAD", "--steps", "1", "--repeats", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert len(re.findall(r"repeat \d: HEAD [0-9.]+ ms, this tree [0-9.]+ ms", out)) == 2
    ratio = float(re.search(r"this tree is ([0-9.]+)x faster", out).group(1))
    assert ratio > 0
    assert _worktrees() == before  # the temporary checkout is gone


def test_a_commit_that_does_not_exist_is_refused():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--against", "no-such-rev", "--repeats", "1"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "no-such-rev" in out.stderr
