"""Top-down balanced sampling from a cluster tree (Vo et al. 2024), and balance measures.

The target size is split across the top-level clusters by water-filling: every cluster gets
min(size, t) with the largest cap t that fits the budget, and the few units left over go, one
each, to randomly chosen clusters still above the cap. Each cluster's share is then split the
same way over its children, down to the finest level, where points are drawn at random
(or the ones closest to the centroid). Small clusters are taken whole, large ones are cut, so
the sample is as uniform over concepts as the sizes allow. Every random choice is seeded.
"""

from __future__ import annotations

import numpy as np

from dinoflow.curation.cluster import HierarchicalClustering


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


def balanced_sample(
    hc: HierarchicalClustering, target_size: int, *, seed: int = 0, strategy: str = "random"
) -> np.ndarray:
    """Indices (sorted, [min(target_size, N)] int64) of a top-down balanced sample of the clustered points.

    strategy: "random" draws leaf-cluster members at random, "closest" takes the ones nearest the centroid.
    """
    if strategy not in ("random", "closest"):
        raise ValueError(f"unknown sampling strategy {strategy!r}; use 'random' or 'closest'")
    rng = np.random.default_rng(seed)
    n_levels = hc.n_levels
    # children[l][c] = level-(l-1) clusters under level-l cluster c (level 0's children are points).
    children: list[list[np.ndarray]] = []
    for lvl in range(n_levels):
        parent = hc.point_labels[0] if lvl == 0 else hc.parents[lvl - 1]
        k = len(hc.centroids[lvl])
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(k + 1))
        children.append([order[bounds[c] : bounds[c + 1]] for c in range(k)])
    top = len(hc.centroids[-1])
    picked: list[np.ndarray] = []

    def take(level: int, cluster: int, budget: int) -> None:
        if budget <= 0:
            return
        kids = children[level][cluster]
        if level == 0:
            if budget >= len(kids):
                picked.append(kids)
            elif strategy == "random":
                picked.append(rng.choice(kids, size=budget, replace=False))
            else:
                by_dist = kids[np.lexsort((kids, hc.sq_dist0[kids]))]
                picked.append(by_dist[:budget])
            return
        shares = water_fill(hc.sizes[level - 1][kids], budget, rng)
        for kid, share in zip(kids, shares):
            take(level - 1, int(kid), int(share))

    shares = water_fill(hc.sizes[-1], int(target_size), rng)
    for c in range(top):
        take(n_levels - 1, c, int(shares[c]))
    if not picked:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate(picked).astype(np.int64))


def balance_entropy(labels: np.ndarray, n_clusters: int | None = None) -> float:
    """Normalised Shannon entropy of the cluster distribution of `labels` [N] in [0, 1] (1 = uniform).

    Normalised by log(n_clusters) (default: the clusters that occur in `labels`).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    k = n_clusters if n_clusters is not None else len(counts)
    if k <= 1:
        return 1.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(k))
