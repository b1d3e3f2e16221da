"""Multi-crop augmentation throughput (images/s) of `dinoflow.data.augment.MultiCropAugment`.

    .venv/bin/python benchmarks/augment.py --batch 32 --iters 5 --threads 2

Recipes: the DINOv2 one (2 × 224 + 8 × 98 px from 320×256 uint8 RGB) and the demo one
(2 × 28 + 4 × 14 px from 28×28 grey MNIST-like images). One image = all its crops.
For comparison, the official PIL + torchvision pipeline runs the DINOv2 recipe at about
21 images/s on one core of this machine.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dinoflow.config import CropConfig
from dinoflow.data.augment import MultiCropAugment

RECIPES = {
    "dinov2 2x224+8x98 from 320x256 RGB": (CropConfig(), (3, 256, 320)),
    "demo 2x28+4x14 from 28x28 grey": (
        CropConfig(global_size=28, local_size=14, n_local=4, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4)),
        (1, 28, 28),
    ),
}


def measure(
    cfg: CropConfig, chw: tuple[int, int, int], batch: int, iters: int, device: torch.device
) -> dict[str, float]:
    """Median and best seconds per batch over `iters` timed calls (after one warm-up call)."""
    aug = MultiCropAugment(cfg)
    images = torch.randint(0, 256, (batch, *chw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(
        device
    )
    gen = torch.Generator().manual_seed(0)
    aug(images, gen)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        aug(images, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    return {
        "sec": sec,
        "images_s": batch / sec,
        "best_images_s": batch / min(times),
        "crops_s": batch * (2 + cfg.n_local) / sec,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="images per call (default 32)")
    p.add_argument("--demo-batch", type=int, default=128, help="images per call for the demo recipe (default 128)")
    p.add_argument("--iters", type=int, default=5, help="timed calls per recipe; median and best are reported")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    print(f"MultiCropAugment throughput on {where}, torch {torch.__version__}, {args.iters} timed calls{load}\n")
    header = f"{'recipe':<38} {'batch':>6} {'ms/batch':>10} {'images/s':>10} {'best img/s':>11} {'crops/s':>10}"
    print(header)
    print("-" * len(header))
    for name, (cfg, chw) in RECIPES.items():
        batch = args.demo_batch if name.startswith("demo") else args.batch
        r = measure(cfg, chw, batch, args.iters, device)
        print(
            f"{name:<38} {batch:>6} {1000 * r['sec']:>10.1f} {r['images_s']:>10.1f} "
            f"{r['best_images_s']:>11.1f} {r['crops_s']:>10.1f}"
        )
    print("\nms/batch, images/s, crops/s: median call; best img/s: fastest call (a busy machine inflates the median)")


if __name__ == "__main__":
    main()
