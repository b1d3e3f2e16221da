"""k-means (fixed-point sums, certified assignment, sampled Lloyd), hierarchical k-means, balanced sampling.

Single process here (Comm()); tests/curation/test_distributed.py runs the same functions under
torchrun and compares every result with one process.
"""

import numpy as np
import pytest

from dinoflow.curation.cluster import hierarchical_kmeans
from dinoflow.curation.kmeans import FixedPoint, assign, kmeans, objective
from dinoflow.curation.sample import balance_entropy, balanced_sample, entropy_of_counts, water_fill
from dinoflow.distributed.comm import Comm

from ._synth import mixture

ONE = Comm()


def _km(x, k, **kw):
    return kmeans(ONE, x, np.arange(len(x)), k, **kw)


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    x, y = mixture([100, 100, 100], dim=16, spread=0.05)
    a, b = _km(x, 3, seed=3), _km(x, 3, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    for comp in range(3):  # each true blob maps to exactly one cluster
        assert len(np.unique(a.labels[y == comp])) == 1
    assert len(np.unique(a.labels)) == 3 and a.sizes.tolist() == [100, 100, 100]


def test_kmeans_centroids_are_the_means_of_every_point_by_default():
    x, _ = mixture([2000, 2000], dim=8, spread=0.3)
    km = _km(x, 2, seed=0, iters=30)
    for j in range(2):  # converged: each centroid is its cluster's mean
        np.testing.assert_allclose(km.centroids[j], x[km.labels == j].mean(0), atol=1e-6)
    np.testing.assert_allclose(km.sq_dist, ((x - km.centroids[km.labels]) ** 2).sum(1), rtol=1e-5)


def test_sampled_lloyd_stays_close_to_full_lloyd():
    x, _ = mixture([400] * 20, dim=16, spread=0.4, seed=4)
    full = _km(x, 20, iters=10, seed=0)
    sampled = _km(x, 20, iters=10, seed=0, max_points_per_centroid=60)
    ratio = objective(ONE, sampled) / objective(ONE, full)
    assert 0.98 < ratio < 1.02, ratio
    assert len(sampled.labels) == len(x)  # every row is assigned, not only the sample


def test_kmeans_clamps_k_to_n():
    x, _ = mixture([3], dim=4)
    km = _km(x, 10)
    assert len(km.centroids) == 3 and sorted(km.labels) == [0, 1, 2]


def test_a_fit_without_assignment_says_so_when_its_labels_are_read():
    x, _ = mixture([50, 50, 50, 50], dim=8)
    with pytest.raises(RuntimeError, match="assign_all=False"):
        _km(x, 4, iters=5, assign_all=False).assignment()
    labels, sq = _km(x, 4, iters=5).assignment()
    assert labels.shape == sq.shape == (len(x),)


def test_fixed_point_sums_do_not_depend_on_order_or_split():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 32)).astype(np.float32)
    labels = rng.integers(0, 7, len(x))
    prev = np.zeros((7, 32), np.float32)
    whole = FixedPoint(ONE, x).centroids(ONE, labels, prev)
    perm = rng.permutation(len(x))
    shuffled = FixedPoint(ONE, x[perm]).centroids(ONE, labels[perm], prev)
    np.testing.assert_array_equal(whole, shuffled)  # bit for bit
    np.testing.assert_allclose(whole, np.stack([x[labels == j].mean(0) for j in range(7)]), atol=1e-6)
    fp = FixedPoint(ONE, x)  # Lloyd keeps the sums and updates them with the rows that moved
    fp.centroids(ONE, labels, prev)
    relabelled = np.where(np.arange(len(x)) % 5 == 0, (labels + 1) % 7, labels)
    np.testing.assert_array_equal(
        fp.centroids(ONE, relabelled, prev), FixedPoint(ONE, x).centroids(ONE, relabelled, prev)
    )


def test_assignment_is_certified_on_exact_ties():
    c = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # centroids 0 and 1 coincide
    x = np.array([[0.9, 0.1], [0.1, 0.9]], np.float32)
    labels, d = assign(ONE, x, c, with_dist=True)
    assert labels.tolist() == [0, 2]  # an exact tie goes to the lower index
    np.testing.assert_allclose(d, [0.02, 0.02], rtol=1e-6)


def test_hierarchical_kmeans_tree_is_consistent():
    x, _ = mixture([400, 200, 100, 50, 25], dim=16, spread=0.3)
    hc = hierarchical_kmeans(ONE, x, np.arange(len(x)), [40, 5], resampling_steps=2, seed=0)
    assert hc.n_levels == 2 and len(hc.centroids[0]) == 40 and len(hc.centroids[1]) == 5
    np.testing.assert_array_equal(hc.labels[1], hc.parents[0][hc.labels[0]])  # a row's top label is its leaf's parent
    assert hc.sizes[0].sum() == len(x) and hc.sizes[1].sum() == len(x)
    np.testing.assert_array_equal(hc.sizes[1], np.bincount(hc.labels[1], minlength=5))
    again = hierarchical_kmeans(ONE, x, np.arange(len(x)), [40, 5], resampling_steps=2, seed=0)
    for lvl in range(2):
        np.testing.assert_array_equal(hc.labels[lvl], again.labels[lvl])


def test_resampling_spreads_centroids_over_concepts():
    # One huge concept and nine small ones: plain k-means spends most centroids on the big one;
    # resampling (fit on points near each centroid) moves centroids towards the small concepts.
    sizes = [5000] + [60] * 9
    x, y = mixture(sizes, dim=16, spread=0.6, seed=2)
    gid = np.arange(len(x))
    plain = hierarchical_kmeans(ONE, x, gid, [30], resampling_steps=0, seed=0)
    resampled = hierarchical_kmeans(ONE, x, gid, [30], resampling_steps=5, seed=0)

    def centroids_on_big(hc):
        big = np.bincount(hc.labels[0][y == 0], minlength=30)
        tot = np.bincount(hc.labels[0], minlength=30)
        return int(((big / np.maximum(tot, 1)) > 0.5).sum())

    assert centroids_on_big(resampled) < centroids_on_big(plain)


def test_water_fill():
    rng = np.random.default_rng(0)
    out = water_fill(np.array([1, 10, 3, 50]), 20, rng)
    assert out.sum() == 20 and out[0] == 1 and out[2] == 3
    assert sorted(out[[1, 3]]) == [8, 8]
    np.testing.assert_array_equal(water_fill(np.array([2, 3]), 10, rng), [2, 3])
    odd = water_fill(np.array([5, 5, 5]), 4, rng)
    assert odd.sum() == 4 and odd.max() - odd.min() <= 1
    with pytest.raises(ValueError):
        water_fill(np.array([1]), -1, rng)


def test_balanced_sampling_beats_random_on_skewed_mixture():
    sizes = [3000, 1000, 300, 100, 50, 30, 20]
    x, y = mixture(sizes, dim=16, spread=0.1, seed=1)
    gid = np.arange(len(x))
    hc = hierarchical_kmeans(ONE, x, gid, [50, 7], resampling_steps=1, seed=0)
    target = 700
    picked = balanced_sample(ONE, hc, gid, target, seed=0)
    idx = np.flatnonzero(picked)
    assert len(idx) == target
    rand = np.random.default_rng(0).choice(len(x), target, replace=False)
    h_bal, h_rand = balance_entropy(y[idx], len(sizes)), balance_entropy(y[rand], len(sizes))
    assert h_bal > h_rand + 0.15, (h_bal, h_rand)
    for comp in (5, 6):  # small concepts are taken whole
        assert (y[idx] == comp).sum() >= 0.9 * sizes[comp]
    np.testing.assert_array_equal(picked, balanced_sample(ONE, hc, gid, target, seed=0))  # same seed, same sample
    assert not np.array_equal(picked, balanced_sample(ONE, hc, gid, target, seed=1))
    closest = balanced_sample(ONE, hc, gid, target, seed=0, strategy="closest")
    assert closest.sum() == target
    for c in np.unique(hc.labels[0][closest]):  # "closest" takes the rows nearest their centroid
        members = hc.labels[0] == c
        assert hc.sq_dist0[members & closest].max() <= hc.sq_dist0[members & ~closest].min(initial=np.inf)
    assert balanced_sample(ONE, hc, gid, 10 * len(x)).all()
    with pytest.raises(ValueError, match="strategy"):
        balanced_sample(ONE, hc, gid, 5, strategy="nearest")


def test_balance_entropy_bounds():
    assert balance_entropy(np.array([0, 1, 2, 3])) == pytest.approx(1.0)
    assert balance_entropy(np.array([0, 0, 0, 1]), 2) < 1.0
    assert balance_entropy(np.array([0, 0]), 4) == pytest.approx(0.0)
    assert entropy_of_counts(np.array([5, 5, 0]), 2) == pytest.approx(1.0)
