"""`make test` keeps the tree lint-clean, formatted and type-checked: ruff over every Python file git
tracks, and mypy over src/, components/ and pipelines/ (both pinned in the test extra, configured in
pyproject.toml). A failure prints the findings; `make lint-fix` applies what ruff can fix."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_is_clean():
    r = _ruff("check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_ruff_format_is_clean():
    r = _ruff("format", "--check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_mypy_is_clean():
    # The cache lives under the temp dir, one per checkout: it works on a read-only clone, and two
    # worktrees never read each other's cache.
    cache = Path(tempfile.gettempdir()) / f"dinoflow-mypy-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
