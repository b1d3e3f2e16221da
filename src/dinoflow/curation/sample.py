"""Top-down balanced sampling from a cluster tree (Vo et al. 2024), distributed, and balance measures.

The target size is split across the top-level clusters by water-filling: every cluster gets
min(size, t) with the largest cap t that fits the budget, and the few units left over go, one
each, to randomly chosen clusters still above the cap. Each cluster's share is then split the
same way over its children, down to the finest level. The budgets need only the cluster sizes,
which every rank holds, so every rank computes the same budgets. The rows of each finest
cluster are then drawn by that cluster's owner rank: the `budget` rows with the smallest seeded
hash of their gid ("random": a uniform draw without replacement) or the smallest distance to
the centroid ("closest"). Every random choice is seeded and none depends on the number of ranks.
"""

from __future__ import annotations

import numpy as np

from dinoflow.curation import seeded
from dinoflow.curation.cluster import Hierarchy
from dinoflow.curation.groups import select_smallest
from dinoflow.distributed.comm import Comm

STRATEGIES = ("random", "closest")


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Split `target` over groups with capacities `sizes` [G] as evenly as the capacities allow. → [G] int64.

    The result never exceeds a capacity and sums to min(target, sizes.sum()).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    if sizes.sum() <= target:
        return sizes.copy()
    lo, hi = 0, int(sizes.max())  # sum(min(lo, sizes)) <= target < sum(min(hi, sizes))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid
    out = np.minimum(sizes, lo)
    rest = int(target - out.sum())
    if rest:
        above = np.flatnonzero(sizes > lo)  # rest < len(above) by the choice of lo
        out[rng.choice(above, size=rest, replace=False)] += 1
    return out


def leaf_budgets(h: Hierarchy, target_size: int, seed: int) -> np.ndarray:
    """Rows to draw from each finest (level-0) cluster: [k_0] int64, summing to min(target, rows)."""
    rng = np.random.default_rng(seed)
    budget = water_fill(h.sizes[-1], int(target_size), rng)
    for lvl in range(h.n_levels - 1, 0, -1):
        parent = h.parents[lvl - 1]  # level-(l-1) cluster → its level-l cluster
        child = np.zeros(len(parent), np.int64)
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(len(budget) + 1))
        for c in range(len(budget)):
            kids = order[bounds[c] : bounds[c + 1]]
            if budget[c] > 0 and len(kids):
                child[kids] = water_fill(h.sizes[lvl - 1][kids], int(budget[c]), rng)
        budget = child
    return budget


def balanced_sample(
    comm: Comm, h: Hierarchy, gid: np.ndarray, target_size: int, *, seed: int = 0, strategy: str = "random"
) -> np.ndarray:
    """Mask [n] of this rank's rows in a top-down balanced sample of min(target_size, rows) rows."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; use one of {STRATEGIES}")
    budget = leaf_budgets(h, target_size, seed)
    key = seeded.row_hash(seed, seeded.SAMPLE_DRAW, gid) if strategy == "random" else h.sq_dist0
    return select_smallest(comm, h.labels[0], key, gid, budget)


def balance_entropy(labels: np.ndarray, n_clusters: int | None = None) -> float:
    """Normalised Shannon entropy of the cluster distribution of `labels` [N] in [0, 1] (1 = uniform).

    Normalised by log(n_clusters) (default: the clusters that occur in `labels`).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    return entropy_of_counts(np.bincount(labels), n_clusters)


def entropy_of_counts(counts: np.ndarray, n_clusters: int | None = None) -> float:
    """`balance_entropy` from per-cluster counts (what ranks can all-reduce)."""
    counts = np.asarray(counts)
    counts = counts[counts > 0]
    if counts.sum() == 0:
        return 0.0
    k = n_clusters if n_clusters is not None else len(counts)
    if k <= 1:
        return 1.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(k))
