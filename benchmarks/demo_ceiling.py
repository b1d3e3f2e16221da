"""What the demo's teacher backbone can reach on MNIST when it is GIVEN the labels.

Self-supervised pretraining cannot be expected to beat a supervised run of the same backbone on
the same images with the same number of steps and the same batch. This trains the configured
`pretrain.model` preset with cross-entropy on its CLS token (no augmentation; AdamW at the
pretraining's peak LR) on the 4,000 MNIST training digits the evaluation uses as its k-NN
memory, and reports the official-protocol CLS k-NN (k 20, T 0.07) on the 1,000 held-out
digits every `--every` steps, next to raw pixels and random init — an upper bound for what
`make demo`'s teacher can show at a given step count. Its numbers are quoted in docs/demo.md.

    python benchmarks/demo_ceiling.py --steps 2880 --every 480 --out reports/demo_ceiling.json

Writes JSON (and a PNG curve next to it) when --out is given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dinoflow.config import load_config
from dinoflow.demo.sources import mnist_split
from dinoflow.evaluation.features import extract_features, pixel_features
from dinoflow.evaluation.knn import knn_accuracy
from dinoflow.evaluation.transform import eval_transform
from dinoflow.models import backbone_from_config
from dinoflow.train.schedules import scaled_lr


def knn20(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor) -> float:
    return knn_accuracy(train_f, train_y, test_f, test_y, ks=(20,))[20]["top1"]


def run(params: str, steps: int, every: int, seed: int, lr: float | None) -> dict:
    full = load_config(params, [])
    cfg = full.pretrain
    xtr, ytr, xte, yte = mnist_split()
    # the evaluate stage's transform, so every number here is comparable with eval.json
    view = dict(image_size=full.evaluate.image_size, resize_ratio=full.evaluate.resize_ratio)
    x_train = eval_transform(torch.from_numpy(xtr), view["image_size"], view["resize_ratio"])
    y_train, y_test = torch.from_numpy(ytr).long(), torch.from_numpy(yte).long()
    raw_tr = pixel_features(xtr, ytr, progress=False, **view)
    raw_te = pixel_features(xte, yte, progress=False, **view)
    raw = knn20(raw_tr.cls, y_train, raw_te.cls, y_test)  # the evaluate stage's baseline

    torch.manual_seed(seed)
    model = backbone_from_config(cfg.model, drop_path_rate=0.0)
    head = torch.nn.Linear(model.embed_dim, 10)
    batch = cfg.train.batch_size_per_rank
    peak = lr if lr is not None else scaled_lr(cfg.optim.base_lr, batch, cfg.optim.lr_scaling)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=peak, weight_decay=cfg.optim.weight_decay)
    g = torch.Generator().manual_seed(seed)

    def knn_now() -> float:  # the evaluate stage's features: final-norm CLS, eval mode
        tr = extract_features(model, xtr, ytr, progress=False, **view)
        te = extract_features(model, xte, yte, progress=False, **view)
        return knn20(tr.cls, y_train, te.cls, y_test)

    curve = [{"step": 0, "knn20": knn_now(), "seconds": 0.0}]
    print(json.dumps(curve[-1]), flush=True)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        loss = F.cross_entropy(head(model(x_train[idx])), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            train_s = time.perf_counter() - t0
            acc = knn_now()
            curve.append({"step": step, "knn20": acc, "loss": float(loss.detach()), "seconds": round(train_s, 1)})
            print(json.dumps(curve[-1]), flush=True)
            t0 = time.perf_counter() - train_s  # evaluation time is not training time
    return {
        "arch": cfg.model.arch,
        "patch_size": cfg.model.patch_size,
        "img_size": view["image_size"],
        "batch": batch,
        "lr": peak,
        "raw_pixels_knn20": raw,
        "gate_min_knn_top1": full.register.min_knn_top1,
        "curve": curve,
    }


def save_png(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in result["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, [100 * p["knn20"] for p in result["curve"]], marker="o", label=f"{result['arch']} supervised (CLS)")
    ax.axhline(100 * result["raw_pixels_knn20"], color="grey", ls="--", label="raw pixels")
    if result["gate_min_knn_top1"] is not None:  # the gate's absolute floor is off by default
        ax.axhline(100 * result["gate_min_knn_top1"], color="tab:red", ls=":", label="registry gate (absolute floor)")
    ax.set_xlabel("steps (batch %d)" % result["batch"])
    ax.set_ylabel("MNIST k-NN top-1 (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--steps", type=int, default=960, help="960 = the demo's pretraining steps")
    p.add_argument("--every", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="default: the pretraining's peak LR")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.steps < 1 or args.every < 1:
        p.error("--steps and --every must be positive")
    result = run(args.params, args.steps, args.every, args.seed, args.lr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        save_png(result, args.out.with_suffix(".png"))
    best = max(result["curve"], key=lambda c: c["knn20"])
    print(
        f"raw pixels {100 * result['raw_pixels_knn20']:.1f}% | supervised {result['arch']} best "
        f"{100 * best['knn20']:.1f}% at step {best['step']} | final {100 * result['curve'][-1]['knn20']:.1f}%"
    )


if __name__ == "__main__":
    main()
