"""The DINOv2 "linear" dense protocol on frozen patch tokens: semantic segmentation and monocular depth.

What DINOv2 does (paper §7 and its `eval/segmentation` / `eval/depth` configs), and what is kept:
- Segmentation "linear": one linear layer on the last block's (normed) patch tokens, logits upsampled
  bilinearly to the label resolution, cross-entropy with 255 ignored; mIoU. Kept. DINOv2 puts a
  BatchNorm before the layer; here the tokens are standardised with the fitting split's per-channel
  mean and std, the same affine map a trained BatchNorm settles to in eval mode.
- Depth "lin. 1": the last block's patch tokens concatenated with the CLS token, a linear layer to
  256 depth bins uniformly spaced in [min_depth, max_depth], the bin scores made a distribution by
  ReLU + 0.1 then division by their sum (its `norm_strategy="linear"`), depth = the expected bin
  centre; trained with the scale-invariant log loss sqrt(Var(g) + 0.15·mean(g)²), g = log p − log gt,
  on valid pixels (its `SigLoss`). Kept; the predicted depth is upsampled bilinearly to the label
  resolution (DINOv2 upsamples 4× and then resizes).
- Images are resized to `size`×`size` (no crop, so every labelled pixel has a prediction); the
  labels stay at their own resolution for testing and are resized (nearest) to `size` for fitting.
- AdamW (weight decay 1e-4) with a cosine schedule over `epochs`; the learning rate is chosen on a
  validation split carved from train (seeded `val_fraction`), then the probe is refitted on all of
  train and tested once. DINOv2's seg/depth configs fix one LR; the grid is this project's choice,
  the same honest selection as the linear classification probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dinoflow.evaluation.dense_data import IGNORE_INDEX, DenseImages, DenseTask
from dinoflow.evaluation.dense_metrics import depth_metrics, segmentation_metrics
from dinoflow.evaluation.linear import one_thread

N_BINS = 256
BIN_EPS = 0.1  # DINOv2's depth head: ReLU(scores) + 0.1, then normalised
SIGLOSS_LAMBDA = 0.15  # the weight on mean(g)² in sqrt(Var(g) + λ·mean(g)²)
WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class DenseTarget:
    """What the probe predicts: a class map (num_classes) or depth in [min_depth, max_depth]."""

    task: DenseTask
    num_classes: int = 0
    min_depth: float = 1e-3
    max_depth: float = 10.0

    def out_channels(self) -> int:
        return self.num_classes if self.task == "segmentation" else N_BINS

    def better(self, a: float, b: float) -> bool:
        """Whether validation score a beats b (mIoU: higher; RMSE: lower)."""
        return a > b if self.task == "segmentation" else a < b


@dataclass
class DenseResult:
    metrics: dict[str, float]  # on the test split
    lr: float  # chosen on the validation split
    val: dict[str, float] = field(default_factory=dict)  # lr → validation mIoU / RMSE
    preds: list[np.ndarray] = field(default_factory=list)  # test predictions, label resolution


def fit_targets(targets: Sequence[np.ndarray], size: int, task: DenseTask) -> torch.Tensor:
    """Targets resized (nearest) to size×size for fitting: int64 [N, S, S] or float32 [N, S, S]."""
    out = []
    for t in targets:
        x = torch.from_numpy(np.ascontiguousarray(t))[None, None].float()
        out.append(F.interpolate(x, size=(size, size), mode="nearest")[0, 0])
    y = torch.stack(out)
    return y.long() if task == "segmentation" else y


def _depth_from_scores(scores: torch.Tensor, target: DenseTarget) -> torch.Tensor:
    """scores [B, 256, h, w] → depth [B, 1, h, w] (expected bin centre)."""
    bins = torch.linspace(target.min_depth, target.max_depth, N_BINS, dtype=scores.dtype, device=scores.device)
    p = F.relu(scores) + BIN_EPS
    p = p / p.sum(dim=1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", p, bins)[:, None]


def predict(head: nn.Module, grids: torch.Tensor, size: tuple[int, int], target: DenseTarget) -> torch.Tensor:
    """grids [B, D, h, w] → class scores [B, C, H, W] or depth [B, 1, H, W] at `size` = (H, W)."""
    scores = head(grids)
    if target.task == "depth":
        scores = _depth_from_scores(scores, target)
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def sig_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Scale-invariant log loss on valid pixels (gt > 0): pred, gt [B, S, S] metres."""
    valid = gt > 0
    g = torch.log(pred[valid].clamp_min(1e-6)) - torch.log(gt[valid])
    return torch.sqrt(g.var(unbiased=False) + SIGLOSS_LAMBDA * g.mean() ** 2 + 1e-12)


def _loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor, target: DenseTarget) -> torch.Tensor:
    out = predict(head, x, (y.shape[-2], y.shape[-1]), target)
    if target.task == "segmentation":
        return F.cross_entropy(out, y, ignore_index=IGNORE_INDEX)
    return sig_loss(out[:, 0], y)


def train_dense_head(
    x: torch.Tensor, y: torch.Tensor, target: DenseTarget, *, lr: float, epochs: int, batch_size: int, seed: int
) -> nn.Module:
    """A linear head (1×1 conv) on standardised grids x [N, D, h, w] against fitted targets y [N, S, S]."""
    g = torch.Generator().manual_seed(seed)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    conv = nn.Conv2d(x.shape[1], target.out_channels(), 1)
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.01, generator=g)
        assert conv.bias is not None  # Conv2d's default bias=True
        conv.bias.zero_()
    head = _Standardised(conv, mean, std)
    opt = torch.optim.AdamW(conv.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    steps = max(1, epochs * math.ceil(len(x) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.0)
    with torch.enable_grad(), one_thread():
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for start in range(0, len(x), batch_size):
                idx = perm[start : start + batch_size]
                loss = _loss(head, x[idx], y[idx], target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return head.requires_grad_(False).eval()


class _Standardised(nn.Module):
    """conv((x − mean) / std): the fitting split's statistics travel with the head."""

    def __init__(self, conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv((x - self.mean) / self.std)


@torch.no_grad()
def predict_split(head: nn.Module, grids: torch.Tensor, split: DenseImages, target: DenseTarget) -> list[np.ndarray]:
    """Per test image, the prediction at its label's own resolution: int64 class ids or float32 metres."""
    out = []
    for i, t in enumerate(split.targets):
        pred = predict(head, grids[i : i + 1], tuple(t.shape[:2]), target)[0]
        out.append(pred.argmax(0).numpy() if target.task == "segmentation" else pred[0].numpy().astype(np.float32))
    return out


def score(preds: list[np.ndarray], split: DenseImages, target: DenseTarget) -> dict[str, float]:
    if target.task == "segmentation":
        return segmentation_metrics(preds, split.targets, target.num_classes)
    return depth_metrics(preds, split.targets, target.min_depth, target.max_depth)


def headline(metrics: dict[str, float], target: DenseTarget) -> float:
    return metrics["miou"] if target.task == "segmentation" else metrics["rmse"]


def dense_probe(
    train_grids: torch.Tensor,
    train: DenseImages,
    test_grids: torch.Tensor,
    test: DenseImages,
    target: DenseTarget,
    *,
    lrs: Sequence[float],
    epochs: int,
    batch_size: int,
    val_fraction: float,
    seed: int,
) -> DenseResult:
    """Choose the LR on a validation split of train, refit on all of train, test once.

    train_grids / test_grids: frozen features [N, D, h, w] of the images resized to the fitting size.
    """
    size = _fit_size(train_grids, train)
    y_all = fit_targets(train.targets, size, target.task)
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(val_fraction * len(train))))
    if n_val >= len(train):
        raise ValueError(f"{len(train)} training images leave none to fit after a validation split of {n_val}")
    va, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    val: dict[str, float] = {}
    best_lr = None
    for lr in lrs:
        head = train_dense_head(
            train_grids[tr], y_all[tr], target, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed
        )
        m = headline(
            score(predict_split(head, train_grids[va], train.subset(va), target), train.subset(va), target), target
        )
        val[f"{lr:g}"] = m
        if best_lr is None or target.better(m, val[f"{best_lr:g}"]):
            best_lr = lr
    assert best_lr is not None
    head = train_dense_head(train_grids, y_all, target, lr=best_lr, epochs=epochs, batch_size=batch_size, seed=seed)
    preds = predict_split(head, test_grids, test, target)
    return DenseResult(score(preds, test, target), best_lr, val, preds)


def _fit_size(grids: torch.Tensor, split: DenseImages) -> int:
    """The fitting resolution: the largest label side, capped at 16 pixels per token (memory)."""
    top = max(max(t.shape[:2]) for t in split.targets)
    return int(min(top, 16 * max(grids.shape[-2:])))
