import numpy as np
import pytest

from dinoflow.curation.dedup import (
    UnionFind, connected_components, exact_duplicates, near_duplicates, relative_duplicates,
)
from ._synth import unit


def test_union_find_single_and_vectorised_agree():
    rng = np.random.default_rng(1)
    n = 300
    a = rng.integers(0, n, 200)
    b = rng.integers(0, n, 200)
    uf = UnionFind(n)
    for i, j in zip(a, b):
        uf.union(int(i), int(j))
    scalar = np.array([uf.find(i) for i in range(n)])
    vec = connected_components(n, a, b)
    np.testing.assert_array_equal(scalar, vec)
    # The representative is the smallest member and each component is closed under the edges.
    for lab in np.unique(vec):
        assert lab == np.flatnonzero(vec == lab).min()
    assert np.all(vec[a] == vec[b])


def test_union_find_chain_merges_transitively():
    n = 10
    a = np.arange(9, 0, -1)  # 9-8, 8-7, ..., 1-0 given in reverse order
    labels = connected_components(n, a, a - 1)
    assert np.all(labels == 0)
    assert len(np.unique(connected_components(5, np.array([], int), np.array([], int)))) == 5


def test_exact_duplicates_points_to_first():
    dup = exact_duplicates(["a", "b", "a", "c", "b", "a"])
    np.testing.assert_array_equal(dup, [-1, -1, 0, -1, 1, 0])


def _planted(n_orig=200, n_dups=60, dim=64, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    orig = unit(rng.normal(size=(n_orig, dim)))
    src = rng.choice(n_orig, n_dups, replace=False)
    dups = unit(orig[src] + noise * rng.normal(size=(n_dups, dim)) / np.sqrt(dim) * 4)
    x = np.concatenate([orig, dups])
    truth = np.concatenate([np.full(n_orig, -1), src])
    return x, truth


def test_near_duplicates_recovers_planted_pairs():
    x, truth = _planted()
    res = near_duplicates(x, k=8, threshold=0.9)
    n_orig = (truth == -1).sum()
    # Every planted duplicate is dropped in favour of its original (lower index wins), nothing else is.
    dropped = np.flatnonzero(~res.keep)
    assert set(dropped) == set(np.flatnonzero(truth >= 0))
    np.testing.assert_array_equal(res.dup_of[dropped], truth[dropped])
    assert res.n_components == n_orig
    assert np.all(res.edge_sim >= 0.9) and np.all(res.edge_a < res.edge_b)
    assert res.nn_sim.shape == (len(x),)


def test_near_duplicates_priority_chooses_keeper():
    x, truth = _planted(n_orig=50, n_dups=10)
    prio = np.zeros(len(x))
    prio[truth >= 0] = -1  # prefer the copies
    res = near_duplicates(x, k=4, threshold=0.9, priority=prio)
    assert np.all(res.keep[truth >= 0])
    assert not np.any(res.keep[truth[truth >= 0]])


def test_near_duplicates_ivf_matches_flat():
    x, _ = _planted(n_orig=2000, n_dups=300, dim=32)
    flat = near_duplicates(x, k=8, threshold=0.9, index_kind="flat")
    ivf = near_duplicates(x, k=8, threshold=0.9, index_kind="ivf", nprobe=8)
    agree = (flat.keep == ivf.keep).mean()
    assert agree > 0.99


def test_relative_duplicates_drops_whole_component():
    x, truth = _planted(n_orig=100, n_dups=20)
    res = near_duplicates(x, k=8, threshold=0.9)
    # The eval set holds a (noisy) copy of original 3's duplicate only.
    d = int(np.flatnonzero(truth >= 0)[0])
    o = int(truth[d])
    rng = np.random.default_rng(5)
    ev = unit(np.concatenate([x[d : d + 1] + 0.01 * rng.normal(size=(1, x.shape[1])), unit(rng.normal(size=(5, x.shape[1])))]))
    rel = relative_duplicates(x, ev, 0.9, labels=res.labels)
    assert rel.contaminated[d] and rel.contaminated[o]
    assert rel.contaminated.sum() == 2
    assert rel.eval_match[d] == 0
    # Without the component labels only the matching row itself goes.
    solo = relative_duplicates(x, ev, 0.99)
    assert solo.contaminated.sum() == 1 and solo.contaminated[d]
    empty = relative_duplicates(x, ev[:0], 0.9)
    assert not empty.contaminated.any()
