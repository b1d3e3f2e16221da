"""Linear probe: learns a separable problem; selection sees train data only; official input layout."""

from __future__ import annotations

import torch

from dinoflow.evaluation.features import FeatureSet
from dinoflow.evaluation.linear import (
    LinearHParams,
    linear_grid,
    linear_input,
    linear_probe,
    select_linear,
    stratified_split,
    train_linear,
)


def _separable(n: int, seed: int, n_classes: int = 4, d: int = 8, blocks: int = 4) -> FeatureSet:
    """Classes are linearly separable only in the LAST block's CLS token; earlier blocks are noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    centres = torch.randn(n_classes, d, generator=torch.Generator().manual_seed(99)) * 3
    last = centres[y] + 0.3 * torch.randn(n, d, generator=g)
    noise = torch.randn(n, blocks - 1, d, generator=g)
    blocks_cls = torch.cat([noise, last[:, None]], dim=1)
    return FeatureSet(cls=last, blocks_cls=blocks_cls, patch_mean=torch.randn(n, d, generator=g), labels=y)


def test_linear_input_follows_the_official_layout():
    f = _separable(6, 0)
    x = linear_input(f, 4, True)
    # CLS of the last 4 blocks oldest first, then the average-pooled patch tokens.
    assert torch.equal(
        x, torch.cat([f.blocks_cls[:, 0], f.blocks_cls[:, 1], f.blocks_cls[:, 2], f.blocks_cls[:, 3], f.patch_mean], 1)
    )
    assert torch.equal(linear_input(f, 1, False), f.blocks_cls[:, -1])


def test_stratified_split_is_seeded_disjoint_and_per_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = stratified_split(y, 0.1, seed=3)
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == 100
    assert [int((y[va] == c).sum()) for c in range(3)] == [5, 3, 2]
    tr2, va2 = stratified_split(y, 0.1, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, stratified_split(y, 0.1, seed=4)[1])


def test_train_linear_learns_a_separable_problem():
    f = _separable(400, 1)
    (layer,) = train_linear(f.cls, f.labels, 4, lrs=[0.1], epochs=20, batch_size=64)
    acc = (layer(f.cls).argmax(1) == f.labels).float().mean()
    assert acc > 0.98


def test_probe_picks_the_informative_blocks_and_generalises():
    train, test = _separable(400, 2), _separable(200, 3)
    res = linear_probe(train, test, n_last_blocks=(1, 4), avgpool=(False, True), lrs=(1e-4, 0.1), epochs=15)
    assert res.test_top1 > 0.95
    assert res.best.lr == 0.1  # 1e-4 barely moves the N(0, 0.01) init
    assert len(res.val_top1) == 8 and all(0.0 <= v <= 1.0 for v in res.val_top1.values())


def test_selection_never_looks_at_the_test_split():
    train, test = _separable(300, 4), _separable(100, 5)
    shuffled = FeatureSet(test.cls, test.blocks_cls, test.patch_mean, test.labels[torch.randperm(100)])
    noise = FeatureSet(
        torch.randn_like(test.cls), torch.randn_like(test.blocks_cls), torch.randn_like(test.patch_mean), test.labels
    )
    kw = dict(n_last_blocks=(1, 4), avgpool=(False, True), lrs=(1e-3, 0.1), epochs=5)
    a, b, c = linear_probe(train, test, **kw), linear_probe(train, shuffled, **kw), linear_probe(train, noise, **kw)
    assert a.best == b.best == c.best and a.val_top1 == b.val_top1 == c.val_top1
    assert a.test_top1 > 0.9 and b.test_top1 < 0.5  # the test labels are used, only after selection
    # select_linear's whole input is train features: it reproduces the probe's choice on its own.
    grid, _ = linear_grid(train, (1, 4), (False, True), (1e-3, 0.1))
    best, scores = select_linear(train, grid, num_classes=4, epochs=5)
    assert best == a.best and scores == a.val_top1


def test_grid_skips_what_the_features_cannot_provide():
    pixels = FeatureSet(torch.randn(10, 5), torch.randn(10, 1, 5), None, torch.zeros(10, dtype=torch.long))
    grid, notes = linear_grid(pixels, (1, 4), (False, True), (0.1,))
    assert grid == [LinearHParams(1, False, 0.1)]
    assert any("n_last_blocks [4]" in n for n in notes) and any("avgpool" in n for n in notes)
