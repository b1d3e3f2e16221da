"""Retrieval from seed images (DINOv2 LVD-142M, paper §3): keep pool images that look like the seeds.

- sample-based: the N nearest pool images of every seed (N = 4 in the paper);
- cluster-based: k-means over the pool, then every cluster that holds at least
  `min_seed_neighbours` seed nearest-neighbours is kept (up to `cap` images per cluster,
  the ones closest to a seed first). Junk (noise, text, blank frames) forms its own clusters,
  which no seed lands in, so cluster retrieval is also the main junk filter.

The pool's rows are spread over ranks; every rank holds the seeds. A seed's nearest rows are
found by each rank among its own rows and decided by the seed's owner rank (`groups`), so the
result does not depend on the number of ranks. Rows are float32, L2-normalised: inner product = cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoflow.curation.dedup import best_match
from dinoflow.curation.exact import exact_dot, margin, topk_exact
from dinoflow.curation.groups import select_smallest
from dinoflow.curation.kmeans import kmeans
from dinoflow.distributed.comm import Comm

SEED_BLOCK, POOL_BLOCK = 1024, 16384


def nearest_seed(comm: Comm, pool: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Each local row's best exact cosine to a seed: [n] float32 (NaN without seeds)."""
    if len(seeds) == 0:
        return np.full(len(pool), np.nan, np.float32)
    return best_match(comm, pool, seeds)[1].astype(np.float32)


def seed_neighbours(
    comm: Comm, pool: np.ndarray, gid: np.ndarray, seeds: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The n nearest pool rows (over all ranks) of every seed: (seed index, local row) pairs held here."""
    import torch

    seed_i, rows, keys = [], [], []
    tol = margin(pool.shape[1], 1.0, 1.0)
    for ss in range(0, len(seeds), SEED_BLOCK):
        sb = np.ascontiguousarray(seeds[ss : ss + SEED_BLOCK])
        st = torch.from_numpy(sb).to(comm.device)
        for ps in range(0, len(pool), POOL_BLOCK):
            pb = np.ascontiguousarray(pool[ps : ps + POOL_BLOCK])
            scores = st @ torch.from_numpy(pb).to(comm.device).T
            r, c, v = topk_exact(scores, n, tol, lambda rr, cc, sb=sb, pb=pb: exact_dot(sb, pb, rr, cc))
            seed_i.append(r + ss)
            rows.append(c + ps)
            keys.append(-v)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    si, ri, key = np.concatenate(seed_i), np.concatenate(rows), np.concatenate(keys)
    won = select_smallest(comm, si, key, gid[ri], np.full(len(seeds), n, np.int64))
    return si[won], ri[won]


def sample_retrieval(comm: Comm, pool: np.ndarray, gid: np.ndarray, seeds: np.ndarray, n_per_seed: int) -> np.ndarray:
    """Mask [n] of local rows among the `n_per_seed` nearest pool rows of any seed."""
    keep = np.zeros(len(pool), bool)
    if len(seeds):
        _, rows = seed_neighbours(comm, pool, gid, seeds, n_per_seed)
        keep[rows] = True
    return keep


@dataclass
class ClusterRetrieval:
    keep: np.ndarray  # [n] bool, local rows
    assignment: np.ndarray  # [n] int64 cluster of each local row
    seed_counts: np.ndarray  # [K] int64 seeds whose nearest pool rows fall in each cluster
    kept_clusters: np.ndarray  # ids of clusters retained


def cluster_retrieval(
    comm: Comm,
    pool: np.ndarray,
    gid: np.ndarray,
    seeds: np.ndarray,
    *,
    n_clusters: int,
    min_seed_neighbours: int = 1,
    n_neighbours: int = 4,
    cap: int | None = None,
    iters: int = 20,
    seed: int = 0,
    seed_sim: np.ndarray | None = None,
    max_points_per_centroid: int | None = None,
) -> ClusterRetrieval:
    """Keep whole pool clusters that hold enough seed neighbours.

    A seed "lands" in the clusters of its `n_neighbours` nearest pool rows (counted once per
    cluster per seed). cap: at most this many rows per kept cluster, highest `seed_sim` first.
    """
    km = kmeans(
        comm,
        pool,
        gid,
        n_clusters,
        iters=iters,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        progress="curate: retrieval k-means",
    )
    k = len(km.centroids)
    km_labels = km.assignment()[0]
    si, rows = seed_neighbours(comm, pool, gid, seeds, n_neighbours)
    pairs = comm.all_gather_cat(np.stack([si, km_labels[rows]], axis=1).reshape(-1, 2))
    landed = np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)
    counts = np.bincount(landed[:, 1], minlength=k).astype(np.int64)
    kept_clusters = np.flatnonzero(counts >= min_seed_neighbours)
    keep = np.isin(km_labels, kept_clusters)
    if cap is not None:
        sims = seed_sim if seed_sim is not None else nearest_seed(comm, pool, seeds)
        keep &= select_smallest(comm, km_labels, -sims.astype(np.float64), gid, np.full(k, cap, np.int64))
    return ClusterRetrieval(keep, km_labels, counts, kept_clusters)
