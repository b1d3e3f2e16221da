"""`dinoflow curate` on the demo pool with 1 process and under torchrun with N: time and identical output.

    python benchmarks/curation_processes.py              # 1 vs 2 processes, 3 rounds
    python benchmarks/curation_processes.py --procs 1,2,3 --demo data/demo --rounds 5

Builds the demo pool into a temporary folder unless --demo points at one; every run starts from
an empty output folder (no embedding shard to reuse). The process counts run interleaved, round
after round (the machine may be shared: a burst of load hits both alike); prints every run's wall
and CPU time, the median wall per process count and its ratio to the first, and whether
manifest.parquet, manifest.json and every shard are byte-identical to the first run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(procs: int, demo: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one curate run into `out`."""
    overrides = [
        f"curate.sources=[{demo}/pool]",
        f"curate.seeds={demo}/seeds",
        f"curate.eval_sets=[{demo}/eval]",
        f"curate.out_dir={out}/curated",
        f"curate.report_dir={out}/reports",
        "tracking.enabled=false",
    ]
    head = (
        [sys.executable]
        if procs == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    )
    cmd = [
        *head,
        "-m",
        "dinoflow",
        "curate",
        "-c",
        str(ROOT / "params.yaml"),
        *[x for o in overrides for x in ("-S", o)],
    ]
    cpu, t = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - t, children_cpu_s() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2", help="comma-separated process counts; the first is the reference")
    p.add_argument("--demo", default="", help="an existing demo folder (default: build one)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    a = p.parse_args()
    counts = [int(v) for v in a.procs.split(",")]
    walls: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="dinoflow-curate-procs-") as tmp:
        demo = Path(a.demo) if a.demo else Path(tmp) / "demo"
        if not a.demo:
            from dinoflow.config import load_config
            from dinoflow.demo.pool import build_demo

            build_demo(load_config(None, [f"demo.out_dir={demo}", "tracking.enabled=false"]))
        reference = None
        for r in range(a.rounds):
            for n in counts:
                out = Path(tmp) / f"r{r}-p{n}"
                wall, cpu = run(n, demo, out)
                walls[n].append(wall)
                files = {f.name: f.read_bytes() for f in sorted((out / "curated").iterdir()) if f.is_file()}
                reference = reference if reference is not None else files
                print(
                    f"round {r + 1}: {n} process(es): {wall:6.1f} s wall, {cpu:6.1f} s CPU, {len(files)} files, "
                    f"identical to the first run: {files == reference}",
                    flush=True,
                )
                shutil.rmtree(out)
    base = statistics.median(walls[counts[0]])
    for n in counts:
        med = statistics.median(walls[n])
        print(f"{n} process(es): median {med:.2f} s wall over {a.rounds} rounds, {med / base:.3f} x the first")
    print(f"({os.cpu_count()} cores; load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
