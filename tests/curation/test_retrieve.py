import numpy as np

from dinoflow.curation.retrieve import cluster_retrieval, nearest_seed, sample_retrieval
from dinoflow.distributed.comm import Comm

from ._synth import mixture, unit

ONE = Comm()


def _pool_with_junk():
    # Four "digit" concepts with seeds drawn from them, plus a junk concept no seed resembles.
    x, y = mixture([200, 200, 200, 200, 80], dim=32, spread=0.3, seed=4)
    seed_rows = np.concatenate([np.flatnonzero(y == c)[:5] for c in range(4)])
    rng = np.random.default_rng(0)
    seeds = unit(x[seed_rows] + 0.05 * rng.normal(size=(len(seed_rows), x.shape[1])))
    return x, y, seeds


def test_sample_retrieval_takes_n_nearest_per_seed():
    x, y, seeds = _pool_with_junk()
    keep = sample_retrieval(ONE, x, np.arange(len(x)), seeds, 4)
    assert not keep[y == 4].any()
    brute = np.argsort(-(seeds.astype(np.float64) @ x.T.astype(np.float64)), axis=1, kind="stable")[:, :4]
    expected = np.zeros(len(x), bool)
    expected[brute.ravel()] = True
    np.testing.assert_array_equal(keep, expected)  # exactly the union of each seed's 4 nearest rows
    sims = nearest_seed(ONE, x, seeds)
    np.testing.assert_allclose(sims, (x.astype(np.float64) @ seeds.T.astype(np.float64)).max(1), atol=1e-7)
    assert np.isnan(nearest_seed(ONE, x, seeds[:0])).all()


def test_cluster_retrieval_drops_unseeded_clusters_and_caps():
    x, y, seeds = _pool_with_junk()
    gid = np.arange(len(x))
    res = cluster_retrieval(ONE, x, gid, seeds, n_clusters=10, min_seed_neighbours=1, seed=0)
    assert not res.keep[y == 4].any()
    assert res.keep[y < 4].mean() > 0.9
    assert res.seed_counts.sum() >= len(seeds)
    capped = cluster_retrieval(ONE, x, gid, seeds, n_clusters=10, cap=20, seed=0)
    per = np.bincount(capped.assignment[capped.keep])
    assert per.max() <= 20 and capped.keep.sum() < res.keep.sum()
    strict = cluster_retrieval(ONE, x, gid, seeds, n_clusters=10, min_seed_neighbours=len(seeds) + 1, seed=0)
    assert not strict.keep.any()
