"""Hierarchical k-means with resampling steps (Vo et al. 2024, "ssl-data-curation"), distributed.

Level 0 clusters the pool's rows (spread over ranks, `kmeans.kmeans`); level l > 0 clusters the
centroids of level l-1, split over the ranks the same way (a level of a billion-image pool has
millions of centroids). A
resampling step re-fits a level's k-means on only the `sample_size` rows closest to each
current centroid (chosen by each cluster's owner rank, `groups.select_smallest`) and then
reassigns every row: dense regions stop dominating the centroids, which spread more evenly
over the concepts in the data (the paper's sample size is about half the mean cluster size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dinoflow.curation.groups import select_smallest
from dinoflow.curation.kmeans import KMeans, assign, kmeans
from dinoflow.distributed.comm import Comm


@dataclass
class Hierarchy:
    """A tree of clusters over this rank's rows.

    labels[l]: cluster id at level l of each local row, [n] int64 (level 0 = finest).
    parents[l]: the level-(l+1) cluster of each level-l cluster, [k_l] int64 (last level: all 0).
    centroids[l]: [k_l, D] float32. sizes[l]: rows (of every rank) in each level-l cluster, [k_l].
    sq_dist0: each local row's exact squared distance to its level-0 centroid, [n] float32.
    """

    labels: list[np.ndarray]
    parents: list[np.ndarray]
    centroids: list[np.ndarray]
    sizes: list[np.ndarray]
    sq_dist0: np.ndarray

    @property
    def n_levels(self) -> int:
        return len(self.centroids)


def level_kmeans(
    comm: Comm,
    x: np.ndarray,
    gid: np.ndarray,
    k: int,
    *,
    resampling_steps: int,
    sample_size: int | None,
    iters: int,
    seed: int,
    max_points_per_centroid: int | None,
    progress: str | None = None,
) -> KMeans:
    """One level: k-means, then `resampling_steps` re-fits on the rows closest to each centroid.

    Each resampling step assigns every row, picks the `sample_size` rows closest to each centroid
    (over all ranks) and fits k-means again on those alone (Lloyd on a seeded sample of them when
    `max_points_per_centroid` is set); every row is then assigned to the last centroids.
    """
    km = kmeans(
        comm, x, gid, k, iters=iters, seed=seed, max_points_per_centroid=max_points_per_centroid, progress=progress
    )
    k = len(km.centroids)
    size = sample_size if sample_size is not None else max(1, round(int(km.sizes.sum()) / k / 2))
    for step in range(resampling_steps if size > 1 else 0):  # one closest row per cluster just gives the centroids
        picked = select_smallest(comm, *km.assignment(), gid, np.full(k, size, np.int64))
        if comm.sum_int(int(picked.sum())) < k:
            break  # fewer picked rows than clusters: keep the fit on every row
        sub = kmeans(
            comm,
            np.ascontiguousarray(x[picked]),
            gid[picked],
            k,
            iters=iters,
            seed=seed + 1 + step,
            max_points_per_centroid=max_points_per_centroid,
            assign_all=False,
            progress=f"{progress} resample {step + 1}" if progress else None,
        )
        labels, sq = assign(comm, x, sub.centroids, with_dist=True)
        sizes = comm.all_reduce_sum(np.bincount(labels, minlength=k).astype(np.int64))
        km = KMeans(sub.centroids, labels, sq, sizes, sub.iterations, km.train)
    return km


def hierarchical_kmeans(
    comm: Comm,
    x: np.ndarray,
    gid: np.ndarray,
    levels: list[int],
    *,
    resampling_steps: int = 0,
    sample_sizes: Sequence[int | None] | None = None,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = None,
) -> Hierarchy:
    """Hierarchical k-means of every rank's rows; `levels` = clusters per level, finest first (e.g. [100, 10]).

    A level asking for more clusters than the level below has is clamped.
    sample_sizes[l]: rows kept per cluster in level l's resampling steps (None: half the mean size).
    """
    if not levels:
        raise ValueError("hierarchical k-means needs at least one level")
    sample_sizes = list(sample_sizes or [None] * len(levels))
    labels: list[np.ndarray] = []
    parents: list[np.ndarray] = []
    centroids: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    sq0 = np.zeros(len(x), np.float32)
    pts, pts_gid = x, gid
    for lvl, k in enumerate(levels):
        km = level_kmeans(
            comm,
            pts,
            pts_gid,
            k,
            resampling_steps=resampling_steps,
            sample_size=sample_sizes[lvl],
            iters=iters,
            seed=seed + 1000 * lvl,
            max_points_per_centroid=max_points_per_centroid,
            progress=f"curate: k-means level {lvl}",
        )
        km_labels, km_sq = km.assignment()
        if lvl == 0:
            labels.append(km_labels)
            sizes.append(km.sizes)
            sq0 = km_sq
        else:
            parent = comm.all_gather_cat(km_labels)  # ranks hold consecutive blocks: index order
            parents.append(parent)
            labels.append(parent[labels[-1]])
            sizes.append(np.bincount(parent, weights=sizes[-1], minlength=len(km.centroids)).astype(np.int64))
        centroids.append(km.centroids)
        # The next level clusters these centroids, split over the ranks like rows.
        n_c = len(km.centroids)
        block = slice(n_c * comm.rank // comm.world, n_c * (comm.rank + 1) // comm.world)
        pts, pts_gid = km.centroids[block], np.arange(n_c, dtype=np.int64)[block]
    parents.append(np.zeros(len(centroids[-1]), np.int64))  # the top level hangs off one root
    return Hierarchy(labels, parents, centroids, sizes, sq0)
