"""Training throughput, model-FLOPs utilisation and peak memory of one DINOv2 step, against a matmul
peak measured in the same run and in the step's own precision (these machines are shared and
noisy: compare ratios, not absolutes).

    python benchmarks/train_throughput.py --arch vit_mini --patch 7 --global-size 28 --local-size 14
    # the CPU reference configuration: ViT-S/14, 112/56 px, 2 + 8 crops, batch 8, two 65,536-prototype heads
    python benchmarks/train_throughput.py --arch vit_small --patch 14 --global-size 112 --local-size 56 \\
        --n-local 8 --batch 8 --prototypes 65536 --separate-ibot-head
    # the same, against another checkout's code, interleaved (old, new, old, new, ...), medians
    python benchmarks/train_throughput.py ... --compare-with /tmp/old-ff64747/src --repeats 5
    # the demo's pretrain step (params.yaml's pretrain section), against several variants at once
    python benchmarks/train_throughput.py --params params.yaml --compare-with A/src --compare-with B/src
    # bytes kept for the backward per activation-checkpointing mode
    python benchmarks/train_throughput.py ... --activation-memory

The step is the real one (`train_step` with `PretrainObjective`: multi-crop and masks, student
forward + backward on 2 global + N local crops, teacher forward, heads, losses, AdamW, EMA).
It uses only interfaces that older checkouts have too, so `--compare-with` runs the very same
measurement on their code (each run in its own process: peak RSS is per process). Model FLOPs
count the matmuls of the backbones and heads (2·m·n·k per product, backward = 2× forward,
teacher forward only); attention's two QK/AV products are included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"


def peak_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype the step's matmuls run in: bf16 under CUDA autocast, fp32 otherwise. The peak an
    MFU divides by must be measured in that dtype (a bf16 step over an fp32 peak reads ~15× high)."""
    return torch.bfloat16 if device.type == "cuda" and precision in ("auto", "bf16") else torch.float32


def matmul_peak(device: torch.device, n: int = 2048, iters: int = 10, dtype=torch.float32) -> float:
    """Best-of FLOP/s of an n×n×n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def vit_flops(dim: int, depth: int, tokens: int, mlp_hidden: int, images: int, mlp_products: int = 2) -> float:
    """Forward matmul FLOPs of a ViT over `images` images of `tokens` tokens
    (qkv, proj, QKᵀ and AV, and the FFN: 2 products for an MLP, 3 for SwiGLU)."""
    per_block = (
        2 * tokens * dim * (3 * dim)
        + 2 * tokens * dim * dim
        + 2 * 2 * tokens * tokens * dim
        + 2 * tokens * dim * mlp_hidden * mlp_products
    )
    return images * depth * per_block


def head_flops(dim: int, hidden: int, bottleneck: int, k: int, rows: int) -> float:
    return 2 * rows * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * k)


def step_flops(bb, head_cfg, args) -> float:
    """Model FLOPs of one step (student forward + backward, teacher forward)."""
    dim, depth = bb.embed_dim, bb.n_blocks
    mlp = bb.block_list()[0].mlp
    hidden, products = (mlp.fc1.out_features, 2) if hasattr(mlp, "fc1") else (mlp.w3.in_features, 3)
    g_tok = (args.global_size // args.patch) ** 2 + 1
    l_tok = (args.local_size // args.patch) ** 2 + 1
    student = vit_flops(dim, depth, g_tok, hidden, 2 * args.batch, products) + vit_flops(
        dim, depth, l_tok, hidden, args.n_local * args.batch, products
    )
    masked_rows = int(0.5 * 2 * args.batch * 0.3 * (g_tok - 1))
    h = head_cfg
    heads = head_flops(
        dim, h.hidden_dim, h.bottleneck_dim, h.out_dim, 2 * args.batch + args.n_local * args.batch + masked_rows
    )
    teacher = vit_flops(dim, depth, g_tok, hidden, 2 * args.batch, products) + head_flops(
        dim, h.hidden_dim, h.bottleneck_dim, h.out_dim, 2 * args.batch + masked_rows
    )
    return 3 * (student + heads) + teacher


def build(args, device: torch.device):
    """(config, objective, student, optimiser, schedules) for the benchmark's configuration."""
    from dinoflow.config import load_config

    if args.params:  # the step exactly as that params file configures it (its sizes fill args)
        cfg = load_config(args.params).pretrain
        args.arch, args.patch = cfg.model.arch, cfg.model.patch_size
        args.global_size, args.local_size, args.n_local = cfg.crops.global_size, cfg.crops.local_size, cfg.crops.n_local
        args.prototypes, args.separate_ibot_head = cfg.head.out_dim, cfg.head.separate_ibot_head
        return (cfg, *_parts(cfg, args, device))
    overrides = [
        f"pretrain.model={{arch: {args.arch}, patch_size: {args.patch}, img_size: {args.global_size}}}",
        f"pretrain.head={{out_dim: {args.prototypes}, ibot_out_dim: {args.prototypes}, "
        f"separate_ibot_head: {str(args.separate_ibot_head).lower()}}}",
        f"pretrain.crops={{global_size: {args.global_size}, local_size: {args.local_size}, n_local: {args.n_local}}}",
    ]
    cfg = load_config(None, overrides).pretrain
    return (cfg, *_parts(cfg, args, device))


def _parts(cfg, args, device: torch.device):
    """(objective, student, optimiser, schedules) for a pretrain config."""
    try:
        from dinoflow.train.pretrain_objective import PretrainObjective
    except ImportError:  # an older checkout (--compare-with)
        from dinoflow.train.objectives import PretrainObjective
    from dinoflow.train.optim import build_optimizer, param_groups
    from dinoflow.train.schedules import Schedules

    obj = PretrainObjective(cfg, device)
    net = obj.student
    bb = net.backbone
    if hasattr(bb, "pack_crops"):  # this checkout has packing (older ones do not)
        bb.pack_crops = not args.no_pack
    if args.compile:
        from dinoflow.train.step import compile_blocks

        for m in (net, obj.teacher):
            compile_blocks(m, device, backend=args.compile_backend)
    opt = build_optimizer(param_groups(net.param_modules(), cfg.optim, {"backbone": bb.n_blocks}), cfg.optim)
    sched = Schedules(cfg.optim, cfg.loss, epoch_length=100, epochs=1, total_batch=args.batch)
    return obj, net, opt, sched


def measure(args) -> dict:
    """Time `args.steps` steps after one warm-up step; returns step times, FLOPs, peaks, memory."""
    from dinoflow.distributed.env import pick_device

    try:
        from dinoflow.train.step import train_step
    except ImportError:  # an older checkout (--compare-with)
        from dinoflow.train.loop import train_step
    device = pick_device(args.device)
    if device.type == "cpu":
        try:  # what the training loop does on a CPU (checkouts that have it)
            from dinoflow.train.host_memory import keep_freed_host_memory
        except ImportError:
            pass
        else:
            keep_freed_host_memory()
    cfg, obj, net, opt, sched = build(args, device)
    images = torch.randint(
        0, 256, (args.batch, 3, args.global_size, args.global_size), dtype=torch.uint8, device=device
    )
    dtype = peak_dtype(device, args.precision)
    peak = matmul_peak(device, n=args.peak_size, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu = [], []
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        views = obj.views(images, step, 0)
        loss, _ = train_step(
            obj, net, opt, views, sched.at(step), clip_grad=cfg.optim.clip_grad, precision=args.precision, device=device
        )
        float(loss)  # the step's end, on any version (old ones return a float, new ones a device tensor)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "step_s": times[1:],
        "step_cpu_s": cpu[1:],
        "flops": step_flops(net.backbone, cfg.head, args),
        "peak_flops": peak,
        "peak_dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def report(res: dict, args, label: str = "") -> None:
    step_s = statistics.median(res["step_s"])
    achieved = res["flops"] / step_s
    print(f"{label}device            {res['device']} (threads {res['threads']})")
    print(
        f"{label}model             {args.arch}/{args.patch}  globals 2×{args.global_size}px  "
        f"locals {args.n_local}×{args.local_size}px  "
        f"K {args.prototypes}{' ×2 heads' if args.separate_ibot_head else ''}  batch {args.batch}"
    )
    print(
        f"{label}step time         median {step_s * 1000:.1f} ms  "
        f"(min {min(res['step_s']) * 1000:.1f} ms, {len(res['step_s'])} steps)  "
        f"CPU time median {statistics.median(res['step_cpu_s']) * 1000:.1f} ms"
    )
    print(f"{label}images/s          {args.batch / step_s:.2f}")
    print(f"{label}model GFLOP/step  {res['flops'] / 1e9:.2f}")
    print(f"{label}achieved          {achieved / 1e9:.1f} GFLOP/s")
    print(
        f"{label}matmul peak       {res['peak_flops'] / 1e9:.1f} GFLOP/s ({args.peak_size}² {res['peak_dtype']}, same run)"
    )
    print(
        f"{label}MFU               {100 * achieved / res['peak_flops']:.1f}% of the measured {res['peak_dtype']} peak"
    )
    print(
        f"{label}peak RSS          {res['peak_rss_mb']:.0f} MiB"
        + (f"   peak GPU {res['peak_gpu_mb']:.0f} MiB" if res["peak_gpu_mb"] else "")
    )


def compare(args, argv: list[str]) -> None:
    """Interleave child runs of each `--compare-with` checkout and this one (A B ... A B ...),
    `--repeats` times each; ratios are against the first `--compare-with`."""
    drop = ("--compare-with", "--repeats")
    child = [a for i, a in enumerate(argv) if not (a.startswith(drop) or (i > 0 and argv[i - 1] in drop))]
    srcs = [*args.compare_with, str(SRC)]
    runs: dict[str, list[dict]] = {s: [] for s in srcs}
    for rep in range(args.repeats):
        for src in srcs:
            env = {**os.environ, "PYTHONPATH": src}
            out = subprocess.run([sys.executable, __file__, *child, "--json"], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{src} run failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs[src].append(res)
            print(
                f"rep {rep + 1} {src}: median step {statistics.median(res['step_s']):.3f} s  "
                f"CPU {statistics.median(res['step_cpu_s']):.3f} s  peak RSS {res['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
    base = srcs[0]
    med = {k: statistics.median(statistics.median(r["step_s"]) for r in v) for k, v in runs.items()}
    rss = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    for src in srcs:
        # per-round ratios base/src (the runs of one round share the machine's load), then the
        # median; CPU time (user + system, all threads) is the steadier measure on a shared machine
        wall, cpu = ([_ratio(b, r, key) for b, r in zip(runs[base], runs[src])] for key in ("step_s", "step_cpu_s"))
        print(
            f"{src}: median step {med[src]:.3f} s, {args.batch / med[src]:.2f} images/s, peak RSS {rss[src]:.0f} MiB; "
            f"speed vs {base}: wall {statistics.median(wall):.3f}× (rounds {', '.join(f'{x:.2f}' for x in wall)}), "
            f"CPU time {statistics.median(cpu):.3f}× (rounds {', '.join(f'{x:.2f}' for x in cpu)}), "
            f"peak RSS {rss[src] / rss[base]:.3f}×"
        )


def _ratio(base: dict, run: dict, key: str) -> float:
    return statistics.median(base[key]) / statistics.median(run[key])


def forward_memory(fn) -> int:
    """Bytes allocated by `fn()` and still held when it returns (on CPU, through the profiler's
    allocation records): after a training forward, what the graph keeps for the backward plus
    the outputs — including what checkpointing stores in its own caches."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    held = sum(e.self_cpu_memory_usage for e in prof.events())
    del out
    return held


def activation_memory(args) -> None:
    """Memory the student's forward keeps for its backward, per activation-checkpointing mode."""
    cfg, obj, net, _, _ = build(args, torch.device("cpu"))
    images = torch.randint(0, 256, (args.batch, 3, args.global_size, args.global_size), dtype=torch.uint8)
    v = obj.views(images, 0, 0)
    base = None
    for mode in ("none", "selective", "full"):
        net.backbone.set_activation_checkpointing(mode)
        held = (
            forward_memory(
                lambda: net(v["global_crops"], v["local_crops"], masks=v["masks"], patch_index=v["mask_indices"])
            )
            / 2**20
        )
        base = base or held
        print(
            f"activation checkpointing {mode:9s}  {held:8.1f} MiB held after the student forward ({100 * held / base:.0f}%)"
        )


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_mini")
    p.add_argument("--patch", type=int, default=7)
    p.add_argument("--global-size", type=int, default=28)
    p.add_argument("--local-size", type=int, default=14)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prototypes", type=int, default=1024)
    p.add_argument("--separate-ibot-head", action="store_true", help="a second K-wide head for iBOT")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul that measures the peak")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--no-pack", action="store_true", help="one pass per crop size (checkouts with packing)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (this checkout)")
    p.add_argument("--compile-backend", default=None, help="e.g. aot_eager for a quick check")
    p.add_argument(
        "--compare-with",
        action="append",
        default=[],
        help="another checkout's src/ to run interleaved with this one (repeatable)",
    )
    p.add_argument(
        "--params", default=None, help="a params file whose pretrain section sets the step (e.g. the demo's)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--activation-memory", action="store_true")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_with:
        compare(args, argv)
    elif args.activation_memory:
        activation_memory(args)
    elif args.json:
        print(json.dumps(measure(args)))
    else:
        report(measure(args), args)


if __name__ == "__main__":
    main()
