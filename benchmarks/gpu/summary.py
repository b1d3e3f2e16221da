"""The GPU check's summary table, printed last by run.sh (the device tool returns only the last
12 kB of output): one row per configuration, then the profile, telemetry and test status.

    python benchmarks/gpu/summary.py OUT/results.json --bench-rc 0 --tests-rc 0 --tests-log OUT/tests.log --seconds 250
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(record: dict) -> list[str]:
    head = (
        f"{'config':<22}{'img/s':>8}{'step ms':>9}{'aug ms':>8}{'MFU spec':>9}{'MFU meas':>9}"
        f"{'peak GiB':>9}{'rsv GiB':>8}{'fwd GiB':>8}{'model GiB':>10}{'compile s':>10}"
    )
    out = [head]
    for c in record.get("configs", []):
        if "images_per_s" not in c:
            out.append(f"{c.get('config', '?'):<22}{c.get('error') or c.get('skipped') or 'no result'}"[:160])
            continue
        mem = c.get("memory_gib", {})
        out.append(
            f"{c['config']:<22}{c['images_per_s']:>8.1f}{c['step_ms']:>9.1f}{c['phases_ms']['augmentation']:>8.1f}"
            f"{c['mfu_spec']:>9.3f}{c['mfu_measured']:>9.3f}{mem.get('peak_allocated', float('nan')):>9.2f}"
            f"{mem.get('peak_reserved', float('nan')):>8.2f}{mem.get('after_forward', float('nan')):>8.2f}"
            f"{c.get('memory_model_gib', {}).get('total', float('nan')):>10.2f}{c['compile_s']:>10.1f}"
        )
    return out


def details(record: dict) -> list[str]:
    out = []
    for c in record.get("configs", []):
        if "phases_ms" in c:
            out.append(f"phases ms [{c['config']}]: " + ", ".join(f"{k} {v:.1f}" for k, v in c["phases_ms"].items()))
        if "profile" in c:
            p = c["profile"]
            out.append(f"SDPA: {', '.join(p['sdpa'])}; attention kernels: {'; '.join(p['attention_kernels']) or '-'}")
            out.append("top kernels (ms/step): " + "; ".join(f"{n} {t}" for n, t in p["top5"]))
        if c.get("telemetry"):
            out.append(f"telemetry [{c['config']}]: " + json.dumps(c["telemetry"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--bench-rc", type=int, required=True)
    p.add_argument("--tests-rc", type=int, required=True)
    p.add_argument("--tests-log", default=None)
    p.add_argument("--seconds", type=int, required=True)
    a = p.parse_args(argv)
    path = Path(a.results)
    record = json.loads(path.read_text()) if path.exists() else {}
    tests = "-"
    if a.tests_log and Path(a.tests_log).exists():
        lines = [ln for ln in Path(a.tests_log).read_text().splitlines() if ln.strip()]
        tests = lines[-1][:120] if lines else "empty log"
    print("=" * 30 + " GPU check summary " + "=" * 30)
    print(
        f"device {record.get('device', '?')}, torch {record.get('torch', '?')}, bf16 matmul "
        f"{record.get('matmul_peak_tflops', '?')} TFLOP/s (spec {record.get('spec_peak_tflops', '?')}), "
        f"shapes {json.dumps(record.get('shapes', {}))}"
    )
    for line in details(record) + rows(record):
        print(line)
    print(f"bench rc {a.bench_rc}; CUDA tests rc {a.tests_rc}: {tests}; {a.seconds} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
