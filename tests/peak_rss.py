"""Peak resident memory of a fresh Python process, for memory bounds in tests.

Measured as the process's own VmHWM (/proc/self/status), written at exit: ru_maxrss of a child
(wait4, RUSAGE_CHILDREN) starts from the RSS of the process that forked it (Linux carries the old
mm's high-water mark over exec), so under a large pytest process every child would read the same.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
# Runs `python -m MODULE ARGS…` or `python -c CODE ARGS…` after registering the exit hook.
_WRAPPER = """
import atexit, os, re, runpy, sys
def _peak():
    status = open("/proc/self/status").read()
    kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
    open(os.environ["PEAK_RSS_FILE"], "w").write(str(kib * 1024))
atexit.register(_peak)
mode, target, *rest = sys.argv[1:]
if mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<measured>", "exec"), {"__name__": "__main__"})
"""


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes

    @property
    def peak_mib(self) -> float:
        return self.peak_rss / MIB


def run_measured(
    args: list[str],
    workdir: Path,
    timeout_s: float = 300,
    env: dict | None = None,
    data_limit: int | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run `python ARGS` (ARGS: `-m module …` or `-c code …`) and return its output and peak RSS;
    `data_limit`: the child's `ulimit -d` in bytes; `cwd`: its working directory (default: ours)."""
    assert args[0] in ("-m", "-c"), args
    peak = Path(workdir).resolve() / f"peak-rss-{os.getpid()}-{len(list(workdir.glob('peak-rss-*')))}"
    env = {**(env if env is not None else os.environ), "PEAK_RSS_FILE": str(peak)}

    def limit() -> None:
        if data_limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

    r = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd=cwd,
        preexec_fn=limit,
    )
    assert peak.exists(), f"the measured process wrote no peak (exit {r.returncode}): {r.stderr[-2000:]}"
    return Measured(r.returncode, r.stdout, r.stderr, json.loads(peak.read_text()))
