"""Exact, near and relative dedup on rows numbered by gid (single process; see test_distributed.py for N)."""

import numpy as np

from dinoflow.curation.dedup import (
    UnionFind,
    component_labels,
    connected_components,
    exact_duplicate_of,
    near_duplicates,
    relative_duplicates,
)
from dinoflow.curation.ivf import choose_nlist
from dinoflow.curation.rows import hash128
from dinoflow.distributed.comm import Comm

from ._synth import mixture, unit

ONE = Comm()


def test_union_find_single_and_vectorised_agree():
    rng = np.random.default_rng(1)
    n = 300
    a, b = rng.integers(0, n, 200), rng.integers(0, n, 200)
    uf = UnionFind(n)
    for i, j in zip(a, b):
        uf.union(int(i), int(j))
    vec = connected_components(n, a, b)
    np.testing.assert_array_equal([uf.find(i) for i in range(n)], vec)
    for lab in np.unique(vec):  # the representative is the smallest member
        assert lab == np.flatnonzero(vec == lab).min()
    assert np.all(vec[a] == vec[b])


def test_union_find_chain_merges_transitively():
    a = np.arange(9, 0, -1)  # 9-8, 8-7, ..., 1-0 given in reverse order
    assert np.all(connected_components(10, a, a - 1) == 0)
    assert len(np.unique(connected_components(5, np.array([], int), np.array([], int)))) == 5


def test_component_labels_touch_only_nodes_with_edges():
    gid = np.array([3, 10, 11, 12, 40])
    labels = component_labels(gid, np.array([10, 12, 40]), np.array([12, 40, 99]))
    assert labels.tolist() == [3, 10, 11, 10, 10]


def test_exact_duplicates_point_to_the_first_row_with_the_same_pixels():
    hexes = ["aa" * 32, "bb" * 32, "aa" * 32, "cc" * 32, "bb" * 32, "aa" * 32]
    first = exact_duplicate_of(ONE, hash128(hexes), np.arange(6) + 100)
    assert first.tolist() == [100, 101, 100, 103, 101, 100]


def _planted(n_orig=200, n_dups=60, dim=64, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    orig = unit(rng.normal(size=(n_orig, dim)))
    src = rng.choice(n_orig, n_dups, replace=False)
    dups = unit(orig[src] + noise * rng.normal(size=(n_dups, dim)) / np.sqrt(dim) * 4)
    return np.concatenate([orig, dups]), np.concatenate([np.full(n_orig, -1), src])


def test_near_duplicates_recovers_planted_pairs():
    x, truth = _planted()
    res = near_duplicates(ONE, x, np.arange(len(x)), k=8, threshold=0.9)
    dropped = np.flatnonzero(~res.keep)  # every planted copy goes, in favour of its (earlier) original
    assert set(dropped) == set(np.flatnonzero(truth >= 0))
    np.testing.assert_array_equal(res.dup_of[dropped], truth[dropped])
    g = res.graph
    assert np.all(g.sim >= 0.9) and np.all(g.a < g.b) and res.index["kind"] == "flat"
    np.testing.assert_allclose(g.nn_sim, np.sort(x @ x.T - 2 * np.eye(len(x)), axis=1)[:, -1], atol=1e-6)


def test_near_duplicates_keep_at_most_k_neighbours_per_row():
    x = unit(np.repeat(np.random.default_rng(0).normal(size=(1, 16)), 6, axis=0) + 1e-4)
    res = near_duplicates(ONE, x, np.arange(6), k=1, threshold=0.9)
    assert len(res.graph.a) <= 6 and res.keep.sum() < 6


def test_ivf_search_matches_exact_search():
    x, truth = _planted(n_orig=4000, n_dups=300, dim=32)
    gid = np.arange(len(x))
    flat = near_duplicates(ONE, x, gid, k=8, threshold=0.9)
    ivf = near_duplicates(ONE, x, gid, k=8, threshold=0.9, ivf_threshold=1000, nprobe=4, train_per_list=16)
    assert ivf.index["kind"] == "ivf" and ivf.index["nlist"] == choose_nlist(len(x), 4, 1000, None)
    assert (flat.keep == ivf.keep).mean() > 0.995
    assert set(zip(ivf.graph.a, ivf.graph.b)) <= set(zip(flat.graph.a, flat.graph.b))  # no false edge
    small_rounds = near_duplicates(
        ONE, x, gid, k=8, threshold=0.9, ivf_threshold=1000, nprobe=4, train_per_list=16, round_rows=500
    )
    assert small_rounds.index["rounds"] > 1  # memory-bounded rounds give the same graph
    np.testing.assert_array_equal(small_rounds.graph.a, ivf.graph.a)
    np.testing.assert_array_equal(small_rounds.graph.nn_sim, ivf.graph.nn_sim)


def test_relative_duplicates_drop_whole_components():
    x, truth = _planted(n_orig=100, n_dups=20)
    gid = np.arange(len(x))
    res = near_duplicates(ONE, x, gid, k=8, threshold=0.9)
    d = int(np.flatnonzero(truth >= 0)[0])  # the eval set holds a noisy copy of one planted copy
    o = int(truth[d])
    rng = np.random.default_rng(5)
    ev = unit(
        np.concatenate([x[d : d + 1] + 0.01 * rng.normal(size=(1, x.shape[1])), unit(rng.normal(size=(5, x.shape[1])))])
    )
    rel = relative_duplicates(ONE, x, res.labels, ev, 0.9)
    assert rel.contaminated[d] and rel.contaminated[o] and rel.contaminated.sum() == 2
    assert rel.eval_match[d] == 0 and rel.eval_match[o] in (-1, 0)
    solo = relative_duplicates(ONE, x, gid, ev, 0.99)  # each row its own component
    assert solo.contaminated.sum() == 1 and solo.contaminated[d]
    assert not relative_duplicates(ONE, x, gid, ev[:0], 0.9).contaminated.any()


def test_grouped_probing_picks_nearly_always_the_nearest_lists(monkeypatch):
    from dinoflow.curation import probe

    monkeypatch.setattr(probe, "GROUPED_FROM", 256)  # the two-level search, on a small quantizer
    x, _ = mixture([300] * 20, dim=16, spread=0.5, seed=3)
    c = x[np.random.default_rng(3).choice(len(x), 400, replace=False)]
    grouped, exact = probe.probe_lists(ONE, x, c, 2), probe.nearest_lists(ONE, x, c, 2)
    assert grouped.shape == exact.shape == (len(x), 2)
    assert (grouped[:, 0] == exact[:, 0]).mean() > 0.95  # the home list
    np.testing.assert_array_equal(probe.probe_lists(ONE, x[::-1], c, 2), grouped[::-1])  # whatever else is scored
