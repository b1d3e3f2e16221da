"""Retrieval from seed images (DINOv2 LVD-142M, paper §3): keep pool images that look like the seeds.

- sample-based: the N nearest pool images of every seed (N = 4 in the paper);
- cluster-based: k-means over the pool, then every cluster that holds at least
  `min_seed_neighbours` seed nearest-neighbours is kept (up to `cap` images per cluster,
  the ones closest to a seed first). Junk (noise, text, blank frames) forms its own clusters,
  which no seed lands in, so cluster retrieval is also the main junk filter.

All embeddings are float32 rows, L2-normalised, so inner product = cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoflow.curation import knn as knnlib
from dinoflow.curation.cluster import kmeans


def nearest_seed(pool: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pool row's best cosine similarity to a seed and that seed's index: ([N] float32, [N] int64)."""
    if len(seeds) == 0 or len(pool) == 0:
        return np.full(len(pool), np.nan, np.float32), np.full(len(pool), -1, np.int64)
    sims, ids = knnlib.knn(seeds, pool, 1)
    return sims[:, 0].astype(np.float32), ids[:, 0]


def sample_retrieval(pool: np.ndarray, seeds: np.ndarray, n_per_seed: int) -> np.ndarray:
    """Mask [N] bool of pool rows among the `n_per_seed` nearest neighbours of any seed."""
    keep = np.zeros(len(pool), bool)
    if len(pool) == 0 or len(seeds) == 0:
        return keep
    _, ids = knnlib.knn(pool, seeds, n_per_seed)
    ids = ids[ids >= 0]
    keep[ids] = True
    return keep


@dataclass
class ClusterRetrieval:
    keep: np.ndarray  # [N] bool
    assignment: np.ndarray  # [N] int64 cluster of each pool row
    seed_counts: np.ndarray  # [K] int64 seeds whose nearest pool neighbours fall in each cluster
    kept_clusters: np.ndarray  # ids of clusters retained


def cluster_retrieval(
    pool: np.ndarray, seeds: np.ndarray, *, n_clusters: int, min_seed_neighbours: int = 1,
    n_neighbours: int = 4, cap: int | None = None, iters: int = 20, seed: int = 0,
    seed_sim: np.ndarray | None = None,
) -> ClusterRetrieval:
    """Keep whole pool clusters that hold enough seed neighbours.

    A seed "lands" in the clusters of its `n_neighbours` nearest pool rows (counted once per
    cluster per seed). cap: at most this many rows per kept cluster, highest `seed_sim` first.
    """
    n = len(pool)
    if n == 0 or len(seeds) == 0:
        return ClusterRetrieval(np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    _, assign, _ = kmeans(pool, n_clusters, iters=iters, seed=seed)
    k = int(assign.max()) + 1
    _, ids = knnlib.knn(pool, seeds, n_neighbours)
    counts = np.zeros(k, np.int64)
    for row in ids:
        row = row[row >= 0]
        counts[np.unique(assign[row])] += 1
    kept_clusters = np.flatnonzero(counts >= min_seed_neighbours)
    keep = np.isin(assign, kept_clusters)
    if cap is not None:
        if seed_sim is None:
            seed_sim, _ = nearest_seed(pool, seeds)
        order = np.lexsort((np.arange(n), -seed_sim, assign))
        a = assign[order]
        starts = np.searchsorted(a, np.arange(k))
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n) - starts[a]
        keep &= rank < cap
    return ClusterRetrieval(keep, assign, counts, kept_clusters)
