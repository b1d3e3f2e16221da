"""Training throughput and model-FLOPs utilisation of one DINOv2 step, against a matmul peak
measured in the same run (these machines are shared and noisy: compare ratios, not absolutes).

    python benchmarks/train_throughput.py --arch vit_mini --patch 7 --global-size 28 --local-size 14
    python benchmarks/train_throughput.py --arch vit_small --patch 14 --global-size 112 --local-size 56 --batch 8

The step is the real one (`dinoflow.train.loop.train_step` with `PretrainObjective`: student
forward + backward on 2 global + N local crops, teacher forward, heads, losses, AdamW, EMA).
Model FLOPs count the matmuls of the backbones and heads (2·m·n·k per product, backward = 2×
forward, teacher forward only); attention's two QK/AV products are included.
"""

from __future__ import annotations

import argparse
import time

import torch

from dinoflow.config import load_config


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
    per_block = 2 * tokens * dim * (3 * dim) + 2 * tokens * dim * dim + 2 * 2 * tokens * tokens * dim \
        + 2 * tokens * dim * mlp_hidden * mlp_products
    return images * depth * per_block


def head_flops(dim: int, hidden: int, bottleneck: int, k: int, rows: int) -> float:
    return 2 * rows * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_mini")
    p.add_argument("--patch", type=int, default=7)
    p.add_argument("--global-size", type=int, default=28)
    p.add_argument("--local-size", type=int, default=14)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prototypes", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dinoflow.train.distributed import pick_device
    from dinoflow.train.loop import train_step
    from dinoflow.train.objectives import PretrainObjective
    from dinoflow.train.optim import build_optimizer, param_groups
    from dinoflow.train.schedules import Schedules

    device = pick_device(args.device)
    cfg = load_config(None, [
        f"pretrain.model={{arch: {args.arch}, patch_size: {args.patch}, img_size: {args.global_size}}}",
        f"pretrain.head.out_dim={args.prototypes}", f"pretrain.head.ibot_out_dim={args.prototypes}",
        f"pretrain.crops={{global_size: {args.global_size}, local_size: {args.local_size}, n_local: {args.n_local}}}",
    ]).pretrain
    obj = PretrainObjective(cfg, device)
    net = obj.student
    bb = net.backbone
    opt = build_optimizer(param_groups(net.param_modules(), cfg.optim, {"backbone": bb.n_blocks}), cfg.optim)
    sched = Schedules(cfg.optim, cfg.loss, epoch_length=100, epochs=1, total_batch=args.batch)
    images = torch.randint(0, 256, (args.batch, 3, args.global_size, args.global_size), dtype=torch.uint8, device=device)
    peak = matmul_peak(device)
    times = []
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        views = obj.views(images, step, 0)
        train_step(obj, net, opt, views, sched.at(step), clip_grad=cfg.optim.clip_grad, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = min(times[1:])  # the first step pays for allocation and warm-up
    dim, depth = bb.embed_dim, bb.n_blocks
    mlp = bb.block_list()[0].mlp
    hidden, products = (mlp.fc1.out_features, 2) if hasattr(mlp, "fc1") else (mlp.w3.in_features, 3)
    g_tok = (args.global_size // args.patch) ** 2 + 1
    l_tok = (args.local_size // args.patch) ** 2 + 1
    student = (vit_flops(dim, depth, g_tok, hidden, 2 * args.batch, products)
               + vit_flops(dim, depth, l_tok, hidden, args.n_local * args.batch, products))
    masked_rows = int(0.5 * 2 * args.batch * 0.3 * (g_tok - 1))
    h = cfg.head
    heads = head_flops(dim, h.hidden_dim, h.bottleneck_dim, h.out_dim, 2 * args.batch + args.n_local * args.batch + masked_rows)
    teacher = vit_flops(dim, depth, g_tok, hidden, 2 * args.batch, products) + head_flops(dim, h.hidden_dim, h.bottleneck_dim, h.out_dim, 2 * args.batch + masked_rows)
    flops = 3 * (student + heads) + teacher
    achieved = flops / step_s
    print(f"device            {device} (threads {torch.get_num_threads()})")
    print(f"model             {args.arch}/{args.patch}  dim {dim} depth {depth}  globals 2×{args.global_size}px  locals {args.n_local}×{args.local_size}px  K {args.prototypes}")
    print(f"batch             {args.batch}")
    print(f"step time (best)  {step_s * 1000:.1f} ms   median {sorted(times[1:])[len(times[1:]) // 2] * 1000:.1f} ms")
    print(f"images/s          {args.batch / step_s:.1f}")
    print(f"model GFLOP/step  {flops / 1e9:.2f}")
    print(f"achieved          {achieved / 1e9:.1f} GFLOP/s")
    print(f"matmul peak       {peak / 1e9:.1f} GFLOP/s (2048² fp32, same run)")
    print(f"MFU               {100 * achieved / peak:.1f}% of the measured peak")


if __name__ == "__main__":
    main()
