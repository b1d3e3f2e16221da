"""Logistic regression probe: accuracy on a separable problem, C chosen on train data only."""

from __future__ import annotations

import torch

from dinoflow.evaluation.logreg import logreg_probe, select_logreg


def _blobs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    return centres[y] + 0.5 * torch.randn(n, 3, generator=g), y


def test_logreg_separates_blobs():
    (xtr, ytr), (xte, yte) = _blobs(150, 0), _blobs(60, 1)
    res = logreg_probe(xtr, ytr, xte, yte, cs=(0.01, 1.0))
    assert res.test_top1 > 0.97
    assert res.best_c in (0.01, 1.0) and set(res.val_top1) == {"C0.01", "C1"}


def test_c_choice_ignores_test_labels():
    (xtr, ytr), (xte, yte) = _blobs(150, 2), _blobs(60, 3)
    a = logreg_probe(xtr, ytr, xte, yte, cs=(1e-4, 1.0))
    b = logreg_probe(xtr, ytr, xte, yte[torch.randperm(60)], cs=(1e-4, 1.0))
    assert a.best_c == b.best_c and a.val_top1 == b.val_top1
    assert a.test_top1 > b.test_top1
    assert select_logreg(xtr, ytr, (1e-4, 1.0))[0] == a.best_c
    # The choice is the first C with the best validation accuracy.
    best = max(a.val_top1.values())
    assert a.best_c == [c for c in (1e-4, 1.0) if a.val_top1[f"C{c:g}"] == best][0]
