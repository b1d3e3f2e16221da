"""Logistic regression on frozen CLS features (scikit-learn), C chosen on a train-carved validation split.

Official (`dinov2/eval/log_regression.py`, cuML): L2-penalised logistic regression in float64 on
the unnormalised CLS features, max 1000 iterations, C swept on 10% of the train split, then the
final model is refit on train + that 10% and evaluated once on the test split. Same here with
sklearn's L-BFGS and the configured C grid; the validation split is the stratified one the
linear probe uses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dinoflow.evaluation.linear import stratified_split


@dataclass
class LogregResult:
    test_top1: float  # fraction in [0, 1]
    best_c: float
    val_top1: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, notes: list[str]):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=max_iter)
    # One BLAS thread: these products are small, and multi-threaded OpenBLAS spin-waiting on a
    # busy 2-core machine made one fit 40-60x slower (25 s vs 0.6 s measured on the demo features).
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"C={c:g}: L-BFGS did not converge in {max_iter} iterations")
    return model


def select_logreg(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cs: Sequence[float],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 1000,
    notes: list[str] | None = None,
) -> tuple[float, dict[str, float]]:
    """Best C by validation accuracy on a split of the train data (only train data in here)."""
    notes = notes if notes is not None else []
    tr, va = stratified_split(train_y, val_fraction, seed)
    x = train_x.double().numpy()
    y = train_y.long().numpy()
    scores: dict[str, float] = {}
    best_c, best_acc = None, -1.0
    for c in cs:
        model = _fit(x[tr], y[tr], float(c), max_iter, notes)
        acc = float((model.predict(x[va]) == y[va]).mean())
        scores[f"C{c:g}"] = acc
        if acc > best_acc:
            best_c, best_acc = float(c), acc
    assert best_c is not None, "empty C grid"
    return best_c, scores


def logreg_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    cs: Sequence[float] = (0.1, 1.0, 10.0),
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 1000,
) -> LogregResult:
    """train_x [N, D], train_y [N], test_x [M, D], test_y [M] → test top-1 of the refit best-C model."""
    if not cs:
        raise ValueError("logreg needs at least one C value")
    notes: list[str] = []
    best_c, scores = select_logreg(
        train_x, train_y, cs, val_fraction=val_fraction, seed=seed, max_iter=max_iter, notes=notes
    )
    model = _fit(train_x.double().numpy(), train_y.long().numpy(), best_c, max_iter, notes)
    acc = float((model.predict(test_x.double().numpy()) == test_y.long().numpy()).mean())
    return LogregResult(test_top1=acc, best_c=best_c, val_top1=scores, notes=notes)
