"""Linear probe on frozen features, with the official DINOv2 semantics and an honest selection.

Official (`dinov2/eval/linear.py`), facts kept here:
- input = concat of the CLS tokens of the last n blocks (n ∈ {1, 4}), optionally followed by the
  average-pooled patch tokens of the last block (`create_linear_input`);
- one `nn.Linear` per grid point, weight ~ N(0, 0.01), bias 0;
- SGD, momentum 0.9, no weight decay; LR = grid LR · batch / 256; cosine annealing to 0 over
  all iterations; cross-entropy.

Deliberate differences:
- The official code picks the best grid point on the split it reports (ImageNet val) — test-set
  selection. Here every choice is made on a validation split carved from the TRAIN split
  (stratified, seeded, `val_fraction`); the chosen configuration is then retrained on the whole
  train split and evaluated once on the test split. `select_linear` never receives test data.
- Features are cached (one frozen forward per image), so there is no random-crop/flip
  augmentation during probe training; epochs run over the cached features.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dinoflow.evaluation.features import FeatureSet


@dataclass(frozen=True)
class LinearHParams:
    n_last_blocks: int
    avgpool: bool
    lr: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LinearResult:
    test_top1: float  # fraction in [0, 1]
    best: LinearHParams
    val_top1: dict[str, float] = field(default_factory=dict)  # grid point name → val accuracy
    notes: list[str] = field(default_factory=list)


def linear_input(feats: FeatureSet, n_last_blocks: int, avgpool: bool) -> torch.Tensor:
    """[N, n·D (+ D)]: CLS tokens of the last n blocks (oldest first), then the patch mean if asked."""
    if n_last_blocks > feats.blocks_cls.shape[1]:
        raise ValueError(f"asked for {n_last_blocks} last blocks; features hold {feats.blocks_cls.shape[1]}")
    x = feats.blocks_cls[:, -n_last_blocks:].flatten(1)
    if avgpool:
        if feats.patch_mean is None:
            raise ValueError("avgpool needs patch tokens; these features have none")
        x = torch.cat([x, feats.patch_mean], dim=1)
    return x.float()


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): per class, a seeded round(val_fraction · n_c) go to val (at least one
    when the class has two or more samples, never the whole class)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    tr, va = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(len(idx) - 1, max(1, int(round(val_fraction * len(idx))))) if len(idx) > 1 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    train_idx = torch.from_numpy(np.sort(np.concatenate(tr)))
    val_idx = torch.from_numpy(np.sort(np.concatenate(va)))
    if len(val_idx) == 0:
        raise ValueError("the validation split is empty: every class has a single training sample")
    return train_idx, val_idx


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (restored afterwards).

    The probe's products are tiny ([256, ~600] × [~600, C]); with 2 threads on a busy 2-core
    machine the thread hand-offs dominated: the default demo grid took 55 s instead of 2 s.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    lrs: Sequence[float],
    epochs: int,
    batch_size: int = 256,
    seed: int = 0,
) -> list[nn.Linear]:
    """One linear classifier [D → C] per learning rate, on fixed features x [N, D], labels y [N].

    As in the official code, all classifiers see the same batches in the same order and train
    together (one summed loss, one SGD with a parameter group per LR); see the module doc.
    """
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in lrs:
        layer = nn.Linear(x.shape[1], num_classes)
        with torch.no_grad():
            layer.weight.normal_(0.0, 0.01, generator=g)
            layer.bias.zero_()
        layers.append(layer)
    groups = [{"params": list(head.parameters()), "lr": lr * batch_size / 256.0} for head, lr in zip(layers, lrs)]
    opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch), eta_min=0.0)
    y = y.long()
    with torch.enable_grad(), one_thread():
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for start in range(0, len(x), batch_size):
                idx = perm[start : start + batch_size]
                xb, yb = x[idx], y[idx]
                loss = sum(F.cross_entropy(head(xb), yb) for head in layers)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                opt.step()
                sched.step()
    return [head.requires_grad_(False) for head in layers]


@torch.no_grad()
def top1(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy as a fraction; ties go to the first class (argmax)."""
    return float((layer(x).argmax(dim=1) == y.long()).float().mean())


def linear_grid(
    feats: FeatureSet, n_last_blocks: Sequence[int], avgpool: Sequence[bool], lrs: Sequence[float]
) -> tuple[list[LinearHParams], list[str]]:
    """Grid points these features support, plus notes on what was dropped and why."""
    notes = []
    available = feats.blocks_cls.shape[1]
    ns = sorted({n for n in n_last_blocks if n <= available})
    dropped = sorted({n for n in n_last_blocks if n > available})
    if dropped:
        notes.append(f"n_last_blocks {dropped} skipped: only {available} block(s) available")
    if not ns:
        ns = [available]
    pools = [a for a in dict.fromkeys(avgpool) if not (a and feats.patch_mean is None)]
    if feats.patch_mean is None and any(avgpool):
        notes.append("avgpool skipped: no patch tokens")
    if not pools:
        pools = [False]
    return [LinearHParams(n, a, float(lr)) for n in ns for a in pools for lr in lrs], notes


def _name(h: LinearHParams) -> str:
    return f"blocks{h.n_last_blocks}_avgpool{int(h.avgpool)}_lr{h.lr:g}"


def select_linear(
    train: FeatureSet,
    grid: Sequence[LinearHParams],
    *,
    num_classes: int,
    val_fraction: float = 0.1,
    epochs: int = 30,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[LinearHParams, dict[str, float]]:
    """Pick a grid point by accuracy on a validation split carved from `train` (only train data in here).

    Returns (best, {grid point name: val top-1}). Ties go to the earlier grid point.
    """
    tr_idx, va_idx = stratified_split(train.labels, val_fraction, seed)
    fit, val = train.subset(tr_idx), train.subset(va_idx)
    scores: dict[str, float] = {}
    best, best_acc = None, -1.0
    # Grid points that share an input train together, one classifier per LR.
    inputs = list(dict.fromkeys((h.n_last_blocks, h.avgpool) for h in grid))
    for n, pool in inputs:
        points = [h for h in grid if (h.n_last_blocks, h.avgpool) == (n, pool)]
        layers = train_linear(
            linear_input(fit, n, pool),
            fit.labels,
            num_classes,
            lrs=[h.lr for h in points],
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
        )
        x_val = linear_input(val, n, pool)
        for h, layer in zip(points, layers):
            scores[_name(h)] = top1(layer, x_val, val.labels)
    for h in grid:  # grid order decides ties
        if scores[_name(h)] > best_acc:
            best, best_acc = h, scores[_name(h)]
    assert best is not None
    return best, scores


def linear_probe(
    train: FeatureSet,
    test: FeatureSet,
    *,
    num_classes: int | None = None,
    n_last_blocks: Sequence[int] = (1, 4),
    avgpool: Sequence[bool] = (False, True),
    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.1,
    epochs: int = 30,
    batch_size: int = 256,
    seed: int = 0,
) -> LinearResult:
    """Select on a train-carved validation split, retrain the winner on all of train, report test top-1."""
    if num_classes is None:
        num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    grid, notes = linear_grid(train, n_last_blocks, avgpool, lrs)
    best, val_scores = select_linear(
        train, grid, num_classes=num_classes, val_fraction=val_fraction, epochs=epochs, batch_size=batch_size, seed=seed
    )
    (layer,) = train_linear(
        linear_input(train, best.n_last_blocks, best.avgpool),
        train.labels,
        num_classes,
        lrs=[best.lr],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    acc = top1(layer, linear_input(test, best.n_last_blocks, best.avgpool), test.labels)
    return LinearResult(test_top1=acc, best=best, val_top1=val_scores, notes=notes)
