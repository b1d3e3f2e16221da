"""k-means and hierarchical k-means with resampling steps (Vo et al. 2024, "ssl-data-curation").

Level 1 clusters the points; level l > 1 clusters the centroids of level l-1, so each level is a
coarser partition and the levels form a tree. A resampling step re-fits a level's k-means on
only the `sample_size` points closest to each current centroid and then reassigns every point:
dense regions stop dominating the centroid positions, so the centroids spread more uniformly
over the concepts in the data (the paper's sample size is about half the mean cluster size).

faiss does the k-means. faiss.Kmeans silently subsamples to `max_points_per_centroid` (256)
points per centroid; we raise that so every point counts. Every run is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dinoflow.curation.knn import as_f32, gpu_available


def kmeans(
    x: np.ndarray, k: int, *, iters: int = 20, seed: int = 0, nredo: int = 1, verbose: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2 k-means of `x` [N, D]. Returns (centroids [k', D], assignment [N] int64, sq_dist [N] float32).

    k is clamped to N (k' = min(k, N)); empty clusters are allowed in the result.
    nredo > 1 runs that many seeded initialisations and keeps the lowest objective.
    """
    import faiss

    x = as_f32(x)
    n, d = x.shape
    if n == 0:
        raise ValueError("k-means needs at least one point")
    k = int(max(1, min(k, n)))
    if k == n:
        # Each point its own cluster: the exact optimum, and faiss refuses k == n anyway in places.
        return x.copy(), np.arange(n, dtype=np.int64), np.zeros(n, np.float32)
    km = faiss.Kmeans(
        d, k, niter=iters, seed=int(seed) % (2**31), nredo=nredo, verbose=verbose,
        max_points_per_centroid=max(256, (n + k - 1) // k + 1), min_points_per_centroid=1,
        gpu=gpu_available(),
    )
    km.train(x)
    dist, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64), dist[:, 0]


def assign_to(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of each row: (assignment [N] int64, squared distance [N] float32)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(as_f32(centroids))
    dist, ids = index.search(as_f32(x), 1)
    return ids[:, 0].astype(np.int64), dist[:, 0]


def closest_per_cluster(assign: np.ndarray, sq_dist: np.ndarray, k: int, n_per_cluster: int) -> np.ndarray:
    """Indices of the `n_per_cluster` points nearest to their centroid in each of k clusters (sorted)."""
    order = np.lexsort((np.arange(len(assign)), sq_dist, assign))  # by cluster, then distance
    a = assign[order]
    starts = np.searchsorted(a, np.arange(k))
    rank = np.arange(len(order)) - starts[a]
    return np.sort(order[rank < n_per_cluster])


@dataclass
class HierarchicalClustering:
    """A tree of clusters.

    point_labels[l]: cluster id at level l of every point, [N] int64 (level 0 = finest).
    parents[l]: for level-l cluster ids, the level-(l+1) cluster id, [k_l] int64 (last level: none).
    centroids[l]: [k_l, D] float32. sq_dist0: each point's squared distance to its level-0 centroid.
    """

    point_labels: list[np.ndarray]
    parents: list[np.ndarray]
    centroids: list[np.ndarray]
    sq_dist0: np.ndarray
    sizes: list[np.ndarray] = field(default_factory=list)

    @property
    def n_levels(self) -> int:
        return len(self.centroids)

    def __post_init__(self) -> None:
        if not self.sizes:
            self.sizes = [np.bincount(lab, minlength=len(c)) for lab, c in zip(self.point_labels, self.centroids)]


def _level_kmeans(
    x: np.ndarray, k: int, resampling_steps: int, sample_size: int | None, iters: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cent, assign, dist = kmeans(x, k, iters=iters, seed=seed)
    k = len(cent)
    size = sample_size if sample_size is not None else max(1, round(len(x) / k / 2))
    if size <= 1:  # a single closest point per cluster just reproduces the centroids
        return cent, assign, dist
    for step in range(resampling_steps):
        picked = closest_per_cluster(assign, dist, k, size)
        cent, _, _ = kmeans(x[picked], k, iters=iters, seed=seed + 1 + step)
        if len(cent) < k:  # fewer picked points than clusters: keep k from the full set instead
            break
        assign, dist = assign_to(x, cent)
    return cent, assign, dist


def hierarchical_kmeans(
    x: np.ndarray,
    levels: list[int],
    *,
    resampling_steps: int = 0,
    sample_sizes: list[int | None] | None = None,
    iters: int = 20,
    seed: int = 0,
) -> HierarchicalClustering:
    """Hierarchical k-means of `x` [N, D] with `levels` = clusters per level, finest first (e.g. [100, 10]).

    A level asking for more clusters than the level below has (or than points) is clamped.
    sample_sizes[l]: points kept per cluster in level l's resampling steps (None: half the mean size).
    """
    if not levels:
        raise ValueError("hierarchical k-means needs at least one level")
    sample_sizes = sample_sizes or [None] * len(levels)
    pts = as_f32(x)
    point_labels: list[np.ndarray] = []
    parents: list[np.ndarray] = []
    centroids: list[np.ndarray] = []
    sq_dist0 = np.zeros(len(pts), np.float32)
    for lvl, k in enumerate(levels):
        cent, assign, dist = _level_kmeans(pts, k, resampling_steps, sample_sizes[lvl], iters, seed + 1000 * lvl)
        if lvl == 0:
            point_labels.append(assign)
            sq_dist0 = dist
        else:
            parents.append(assign)
            point_labels.append(assign[point_labels[-1]])
        centroids.append(cent)
        pts = cent
    parents.append(np.zeros(len(centroids[-1]), np.int64))  # the top level hangs off one root
    return HierarchicalClustering(point_labels, parents, centroids, sq_dist0)
