"""Peak resident memory of a child process, for memory bounds in tests: `os.wait4` returns the
child's own rusage (ru_maxrss, KiB on Linux), unlike RUSAGE_CHILDREN, which is the maximum over
every child this test process ever waited for."""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes

    @property
    def peak_mib(self) -> float:
        return self.peak_rss / MIB


def run_measured(cmd: list[str], workdir: Path, timeout_s: float = 300, env: dict | None = None) -> Measured:
    """Run `cmd` to completion (killed after timeout_s) and return its output and peak RSS."""
    out, err = workdir / "child.out", workdir / "child.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, start_new_session=True)
    timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, 9))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return Measured(proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss * 1024)
