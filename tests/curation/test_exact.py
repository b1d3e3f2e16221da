"""Certified decisions: the same answer whatever GEMM shape or kernel produced the fp32 scores."""

import numpy as np
import pytest
import torch

from dinoflow.curation.exact import argmax_exact, exact_dot, margin, pairs_above, topk_exact

from ._synth import unit


def _data(n=300, m=50, d=64, seed=0):
    rng = np.random.default_rng(seed)
    q, x = unit(rng.normal(size=(n, d))), unit(rng.normal(size=(m, d)))
    x[7] = x[3]  # an exact tie
    return q, x


def _exact_scores(q, x):
    return q.astype(np.float64) @ x.astype(np.float64).T


def test_exact_dot_does_not_depend_on_what_else_is_computed():
    q, x = _data()
    rows, cols = np.arange(300) % 300, np.arange(300) % 50
    whole = exact_dot(q, x, rows, cols)
    parts = np.concatenate([exact_dot(q, x, rows[i : i + 7], cols[i : i + 7]) for i in range(0, 300, 7)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_allclose(whole, (q[rows].astype(np.float64) * x[cols]).sum(1), rtol=1e-15)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_topk_matches_exact_ranking_whatever_the_fp32_noise(k):
    q, x = _data()
    ex = _exact_scores(q, x)
    tol = margin(q.shape[1], 1.0, 1.0)
    rng = np.random.default_rng(1)
    expected = np.argsort(-ex, axis=1, kind="stable")[:, :k]  # exact desc, lower column first on ties
    for noise in (0.0, 0.4):  # fp32 scores perturbed by up to 0.4·tol still give the same certified answer
        s = torch.from_numpy((ex + noise * tol * rng.uniform(-1, 1, ex.shape)).astype(np.float32))
        rows, cols, vals = topk_exact(s, k, tol, lambda r, c: exact_dot(q, x, r, c))
        np.testing.assert_array_equal(cols.reshape(-1, k), expected)
        np.testing.assert_array_equal(vals, exact_dot(q, x, rows, cols))
        np.testing.assert_array_equal(argmax_exact(s, tol, lambda r, c: exact_dot(q, x, r, c)), expected[:, 0])


def test_exact_ties_go_to_the_lower_column():
    q, x = _data()
    s = torch.from_numpy(np.ascontiguousarray(q @ x.T))
    winners = argmax_exact(s, margin(64, 1.0, 1.0), lambda r, c: exact_dot(q, x, r, c))
    assert 7 not in winners  # column 7 equals column 3


def test_pairs_above_threshold_are_exact():
    q, x = _data()
    ex = _exact_scores(q, x)
    thr = float(np.quantile(ex, 0.99))
    s = torch.from_numpy(ex.astype(np.float32))
    rows, cols, vals = pairs_above(s, thr, margin(64, 1.0, 1.0), lambda r, c: exact_dot(q, x, r, c))
    assert set(zip(rows.tolist(), cols.tolist())) == set(zip(*np.nonzero(ex >= thr)))
    assert np.all(vals >= thr)
