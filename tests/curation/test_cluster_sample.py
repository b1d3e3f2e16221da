import numpy as np
import pytest

from dinoflow.curation.cluster import closest_per_cluster, hierarchical_kmeans, kmeans
from dinoflow.curation.sample import balance_entropy, balanced_sample, water_fill

from ._synth import mixture


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    x, y = mixture([100, 100, 100], dim=16, spread=0.05)
    c1, a1, _ = kmeans(x, 3, seed=3, nredo=5)
    c2, a2, _ = kmeans(x, 3, seed=3, nredo=5)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(c1, c2)
    # Each true blob maps to exactly one cluster.
    for comp in range(3):
        assert len(np.unique(a1[y == comp])) == 1
    assert len(np.unique(a1)) == 3


def test_kmeans_does_not_subsample():
    # 2 clusters x 2000 points > faiss' default 256 points per centroid: all must be used.
    x, _ = mixture([2000, 2000], dim=8, spread=0.3)
    c, a, d = kmeans(x, 2, seed=0, iters=5)
    for j in range(2):
        np.testing.assert_allclose(c[j], x[a == j].mean(0), atol=2e-3)


def test_kmeans_clamps_k_to_n():
    x, _ = mixture([3], dim=4)
    c, a, _ = kmeans(x, 10)
    assert len(c) == 3 and sorted(a) == [0, 1, 2]


def test_closest_per_cluster():
    assign = np.array([0, 0, 0, 1, 1, 2])
    dist = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 9.0], np.float32)
    np.testing.assert_array_equal(closest_per_cluster(assign, dist, 3, 2), [1, 2, 3, 4, 5])


def test_hierarchical_kmeans_tree_is_consistent():
    x, _ = mixture([400, 200, 100, 50, 25], dim=16, spread=0.3)
    hc = hierarchical_kmeans(x, [40, 5], resampling_steps=2, seed=0)
    assert hc.n_levels == 2
    assert len(hc.centroids[0]) == 40 and len(hc.centroids[1]) == 5
    # A point's top-level label is its leaf cluster's parent.
    np.testing.assert_array_equal(hc.point_labels[1], hc.parents[0][hc.point_labels[0]])
    assert hc.sizes[0].sum() == len(x) and hc.sizes[1].sum() == len(x)
    again = hierarchical_kmeans(x, [40, 5], resampling_steps=2, seed=0)
    for l in range(2):
        np.testing.assert_array_equal(hc.point_labels[l], again.point_labels[l])


def test_resampling_spreads_centroids_over_concepts():
    # One huge concept and nine small ones: plain k-means spends most centroids on the big one;
    # resampling (fit on points near each centroid) moves centroids towards the small concepts.
    sizes = [5000] + [60] * 9
    x, y = mixture(sizes, dim=16, spread=0.6, seed=2)
    plain = hierarchical_kmeans(x, [30], resampling_steps=0, seed=0)
    resampled = hierarchical_kmeans(x, [30], resampling_steps=5, seed=0)

    def centroids_on_big(hc):
        big = np.bincount(hc.point_labels[0][y == 0], minlength=30)
        tot = np.bincount(hc.point_labels[0], minlength=30)
        return int(((big / np.maximum(tot, 1)) > 0.5).sum())

    assert centroids_on_big(resampled) <= centroids_on_big(plain)


def test_water_fill():
    rng = np.random.default_rng(0)
    out = water_fill(np.array([1, 10, 3, 50]), 20, rng)
    assert out.sum() == 20
    assert out[0] == 1 and out[2] == 3
    assert sorted(out[[1, 3]]) == [8, 8]
    np.testing.assert_array_equal(water_fill(np.array([2, 3]), 10, rng), [2, 3])
    odd = water_fill(np.array([5, 5, 5]), 4, rng)
    assert odd.sum() == 4 and odd.max() - odd.min() <= 1
    with pytest.raises(ValueError):
        water_fill(np.array([1]), -1, rng)


def test_balanced_sampling_beats_random_on_skewed_mixture():
    sizes = [3000, 1000, 300, 100, 50, 30, 20]
    x, y = mixture(sizes, dim=16, spread=0.1, seed=1)
    hc = hierarchical_kmeans(x, [50, 7], resampling_steps=1, seed=0)
    target = 700
    idx = balanced_sample(hc, target, seed=0)
    assert len(idx) == target and len(np.unique(idx)) == target
    rand = np.random.default_rng(0).choice(len(x), target, replace=False)
    h_bal = balance_entropy(y[idx], len(sizes))
    h_rand = balance_entropy(y[rand], len(sizes))
    assert h_bal > h_rand + 0.15, (h_bal, h_rand)
    # Small concepts are taken whole.
    for comp in (5, 6):
        assert (y[idx] == comp).sum() >= 0.9 * sizes[comp]
    # Same seed, same sample; another seed, another one.
    np.testing.assert_array_equal(idx, balanced_sample(hc, target, seed=0))
    assert not np.array_equal(idx, balanced_sample(hc, target, seed=1))
    closest = balanced_sample(hc, target, seed=0, strategy="closest")
    assert len(closest) == target
    assert len(balanced_sample(hc, 10 * len(x))) == len(x)


def test_balance_entropy_bounds():
    assert balance_entropy(np.array([0, 1, 2, 3])) == pytest.approx(1.0)
    assert balance_entropy(np.array([0, 0, 0, 1]), 2) < 1.0
    assert balance_entropy(np.array([0, 0]), 4) == pytest.approx(0.0)
