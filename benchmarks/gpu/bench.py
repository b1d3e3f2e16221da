"""The GPU check of issue 18: bf16 step throughput, MFU and peak memory of the DINOv2 step for
ViT-S/14, ViT-B/14 and ViT-L/14 at 224/98 px, 2 + 8 crops, K = 65,536, batch 64, each with
per-block compilation and crop packing on and off. Started by `run.sh` (which also runs the
CUDA-only tests); see there.

    python benchmarks/gpu/bench.py [--budget-s 330] [--out DIR]
    python benchmarks/gpu/bench.py --dry-run     # CPU, tiny shapes: every code path, minutes

MFU is model FLOPs per second (the matmuls of `benchmarks/train_throughput.py`'s count) over
(a) the spec's dense bf16 peak, 989 TFLOP/s for an H100/H200, and (b) a bf16 8192³ matmul
measured in the same run. Configurations run cheapest-first (no compilation), then the compiled
ones, largest model first; whatever the time budget cannot fit is listed as skipped, never
silently dropped. Results: one JSON line per configuration on stdout and in DIR/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (train_throughput)

SPEC_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16
ARCHS = ("vit_small", "vit_base", "vit_large")


def configs(dry_run: bool) -> list[dict]:
    """Uncompiled first (cheap, all models), then compiled, largest model first."""
    archs = ("vit_pico", "vit_mini") if dry_run else ARCHS
    plain = [{"arch": a, "compile": False, "pack": p} for a in archs for p in (True, False)]
    compiled = [{"arch": a, "compile": True, "pack": p} for a in reversed(archs) for p in (True, False)]
    return plain + compiled


def shape_args(cfg: dict, dry_run: bool) -> SimpleNamespace:
    if dry_run:
        base = dict(patch=7, global_size=28, local_size=14, n_local=8, batch=4, prototypes=256, steps=2, warmup=1)
    else:
        base = dict(patch=14, global_size=224, local_size=98, n_local=8, batch=64, prototypes=65536, steps=10, warmup=3)
    # the recipe: a separate iBOT head for ViT-L (and g), the DINO head shared for S and B
    return SimpleNamespace(
        arch=cfg["arch"],
        separate_ibot_head=cfg["arch"] == "vit_large",
        no_pack=not cfg["pack"],
        compile=cfg["compile"],
        compile_backend="aot_eager" if dry_run else None,
        precision="auto",
        device="cuda" if not dry_run else "cpu",
        **base,
    )


def run_one(cfg: dict, dry_run: bool, peak: float, device: torch.device) -> dict:
    """Warm up (compiles), then time `steps` steps with a single synchronisation at the end."""
    import train_throughput as tt

    from dinoflow.train.step import train_step

    args = shape_args(cfg, dry_run)
    torch._dynamo.reset()
    t_build = time.perf_counter()
    pcfg, obj, net, opt, sched = tt.build(args, device)
    for m in (net, obj.teacher):  # every configuration computes all the model FLOPs the MFU counts
        m.backbone.prune_last_block = False
    images = torch.randint(
        0, 256, (args.batch, 3, args.global_size, args.global_size), dtype=torch.uint8, device=device
    )
    views = [obj.views(images, step, 0) for step in range(2)]  # the step alone: crops are the loader's job
    cuda = device.type == "cuda"

    def steps(n: int, first: int) -> None:
        for i in range(n):
            train_step(
                obj,
                net,
                opt,
                views[i % 2],
                sched.at(first + i),
                clip_grad=pcfg.optim.clip_grad,
                precision=args.precision,
                device=device,
            )

    steps(args.warmup, 0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    warm_s = time.perf_counter() - t_build
    t0 = time.perf_counter()
    steps(args.steps, args.warmup)
    if cuda:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.steps
    flops = tt.step_flops(net.backbone, pcfg.head, args)
    out = {
        **cfg,
        "batch": args.batch,
        "separate_ibot_head": args.separate_ibot_head,
        "step_ms": round(1000 * step_s, 2),
        "images_per_s": round(args.batch / step_s, 1),
        "tflop_per_step": round(flops / 1e12, 3),
        "mfu_spec": float(f"{flops / step_s / SPEC_BF16_FLOPS:.4g}"),
        "mfu_measured": float(f"{flops / step_s / peak:.4g}"),
        "setup_and_warmup_s": round(warm_s, 1),
    }
    if cuda:
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    obj = net = opt = views = None  # free the GPU memory before the next configuration
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, aot_eager compilation")
    p.add_argument("--budget-s", type=float, default=330.0, help="stop starting configurations after this")
    p.add_argument("--out", default=None, help="directory for results.jsonl")
    args = p.parse_args(argv)
    import train_throughput as tt

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    dtype = tt.peak_dtype(device)
    peak = tt.matmul_peak(device, n=512 if args.dry_run else 8192, iters=3 if args.dry_run else 20, dtype=dtype)
    head = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "matmul_peak_tflops": round(peak / 1e12, 2),
        "peak_dtype": str(dtype),
        "spec_peak_tflops": SPEC_BF16_FLOPS / 1e12,
    }
    print(json.dumps(head), flush=True)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    start, failed = time.perf_counter(), 0
    for cfg in configs(args.dry_run):
        if time.perf_counter() - start > args.budget_s:
            res = {**cfg, "skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            try:
                res = run_one(cfg, args.dry_run, peak, device)
            except Exception as exc:  # noqa: BLE001 - report and go on: one failing configuration must not hide the others
                failed += 1
                res = {**cfg, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                traceback.print_exc()
        line = json.dumps(res)
        print(line, flush=True)
        if out_dir:
            with (out_dir / "results.jsonl").open("a") as f:
                f.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
