"""Feature-extraction throughput of the evaluation path (frozen backbone, eval transform excluded).

    .venv/bin/python benchmarks/feature_throughput.py                    # vit_small/14, 224 px, batch 32
    .venv/bin/python benchmarks/feature_throughput.py --arch vit_tiny --batches 5

Measures what `dinoflow.evaluation.features.extract_features` runs per batch:
`get_intermediate_layers(x, 4, return_class_token=True, norm=True)` in fp32 on CPU (bf16
autocast on CUDA), random init, images/s over the timed batches after one warm-up batch.
Also prints the fp32 matmul peak measured in the same run, since a busy neighbour can halve
both numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dinoflow.config.archs import ARCHS
from dinoflow.evaluation.features import _autocast, resolve_device
from dinoflow.models import build_backbone


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_small", choices=ARCHS)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3, help="timed batches (after one warm-up)")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    model = (
        build_backbone(args.arch, patch_size=args.patch_size, img_size=args.image_size, layerscale_init=1.0)
        .eval()
        .to(dev)
    )
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=dev)

    def step() -> None:
        with torch.inference_mode(), _autocast(dev):
            model.get_intermediate_layers(x, 4, return_class_token=True, norm=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()
    t = time.perf_counter()
    for _ in range(args.batches):
        step()
    dt = time.perf_counter() - t
    result = {
        "arch": args.arch,
        "patch_size": args.patch_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "images_per_s": round(args.batches * args.batch_size / dt, 2),
        "matmul_gflops_fp32": round(matmul_gflops(), 1) if dev.type == "cpu" else None,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
