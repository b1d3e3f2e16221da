"""Inference throughput of backbone files, measured in one run (compare the ratio).

python benchmarks/inference_throughput.py models/teacher/backbone.pth models/student/backbone.pth --size 28
"""

from __future__ import annotations

import argparse
import time

import torch

from dinoflow.models import load_backbone


def images_per_s(model: torch.nn.Module, size: int, batch: int, iters: int) -> float:
    x = torch.randn(batch, 3, size, size)
    best = 0.0
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x)
            best = max(best, batch / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    rows = []
    for path in args.paths:
        m = load_backbone(path).eval()
        n_params = sum(t.numel() for t in m.parameters())
        rows.append((path, m.arch, n_params, images_per_s(m, args.size, args.batch, args.iters)))
    base = rows[0][3]
    print(f"{'backbone':<40} {'arch':<10} {'params':>10} {'images/s':>10} {'× first':>8}")
    for path, arch, n, ips in rows:
        print(f"{path:<40} {arch:<10} {n:>10,} {ips:>10.0f} {ips / base:>8.2f}")


if __name__ == "__main__":
    main()
