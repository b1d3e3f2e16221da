"""Duplicate removal: exact (pixel hash), near (k-NN graph + union-find) and relative (vs eval sets).

The DINOv2 LVD-142M recipe: embed every image, link each to its k nearest neighbours whose
cosine similarity is at least a threshold, take the connected components and keep one image
per component. Relative dedup drops every pool component that touches an evaluation image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dinoflow.curation import knn as knnlib


class UnionFind:
    """Disjoint sets over 0..n-1 whose representative is always the smallest member.

    `union_edges` is vectorised (min-label hooking + pointer jumping), so millions of edges
    cost a few numpy passes rather than a Python loop; `union` handles a single pair.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:  # path compression
            nxt = int(self.parent[i])
            self.parent[i] = root
            i = nxt
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def union_edges(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of every pair (a[i], b[i])."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        if a.size == 0:
            return
        p = self.roots()
        while True:
            ra, rb = p[a], p[b]
            m = np.minimum(ra, rb)
            # Hook each root onto the smallest root it is linked to; roots only ever decrease.
            np.minimum.at(p, ra, m)
            np.minimum.at(p, rb, m)
            while True:  # pointer jumping until every node points at a root
                pp = p[p]
                if np.array_equal(pp, p):
                    break
                p = pp
            if np.array_equal(p[a], p[b]):
                break
        self.parent = p

    def roots(self) -> np.ndarray:
        """Representative (smallest member) of each element's set, [n] int64."""
        p = self.parent.copy()
        while True:
            pp = p[p]
            if np.array_equal(pp, p):
                return p
            p = pp


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (= smallest member index) of each of n nodes linked by edges (a[i], b[i])."""
    uf = UnionFind(n)
    uf.union_edges(a, b)
    return uf.roots()


def exact_duplicates(hashes: Sequence[str]) -> np.ndarray:
    """For each item, the index of the first item with the same hash, or -1 when it is the first. [N] int64."""
    first: dict[str, int] = {}
    out = np.full(len(hashes), -1, dtype=np.int64)
    for i, h in enumerate(hashes):
        j = first.setdefault(h, i)
        if j != i:
            out[i] = j
    return out


@dataclass
class NearDupResult:
    """labels: component of each row (smallest member index), [N] int64.
    keep: True for the one row kept per component, [N] bool.
    dup_of: the kept row of each dropped row, -1 for kept rows, [N] int64.
    edge_a, edge_b, edge_sim: the graph edges (a < b) at or above the threshold.
    nn_sim: similarity of each row to its nearest other row ([N] float32; -1 with no neighbour).
    """

    labels: np.ndarray
    keep: np.ndarray
    dup_of: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_sim: np.ndarray
    nn_sim: np.ndarray
    index: dict

    @property
    def n_components(self) -> int:
        return int(self.keep.sum())


def knn_edges(
    x: np.ndarray, k: int, threshold: float, *, seed: int = 0, index_kind: str = "auto", nprobe: int = 16,
    batch_size: int = 65_536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Edges of the cosine k-NN graph of `x` [N, D] (L2-normalised) with similarity >= threshold.

    Returns (a, b, sim, nn_sim, index_info) with a < b, each undirected edge once, sorted by (a, b).
    nn_sim [N] is each row's best similarity to another row (for the report's histograms).
    """
    n = len(x)
    if n == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32), np.zeros(0, np.float32), {"kind": "none"}
    index, info = knnlib.build_index(x, kind=index_kind, nprobe=nprobe, seed=seed)
    nn_sim = np.full(n, -1.0, np.float32)
    parts_a, parts_b, parts_s = [], [], []
    # k + 1: a row finds itself first (or an exact twin); ignore self matches explicitly.
    for start, sims, ids in knnlib.iter_knn(index, x, k + 1, batch_size):
        rows = np.arange(start, start + len(ids))[:, None]
        valid = (ids >= 0) & (ids != rows)
        nn = np.where(valid, sims, -np.inf).max(axis=1)
        nn_sim[start : start + len(ids)] = np.where(np.isfinite(nn), nn, -1.0)
        hit = valid & (sims >= threshold)
        r, c = np.nonzero(hit)
        a, b = rows[r, 0], ids[r, c]
        parts_a.append(np.minimum(a, b))
        parts_b.append(np.maximum(a, b))
        parts_s.append(sims[r, c])
    a = np.concatenate(parts_a)
    b = np.concatenate(parts_b)
    s = np.concatenate(parts_s).astype(np.float32)
    if a.size:
        key = a * n + b
        order = np.lexsort((-s, key))  # by edge, best similarity first
        key, a, b, s = key[order], a[order], b[order], s[order]
        first = np.ones(len(key), bool)
        first[1:] = key[1:] != key[:-1]
        a, b, s = a[first], b[first], s[first]
    return a, b, s, nn_sim, info.as_dict()


def near_duplicates(
    x: np.ndarray, k: int, threshold: float, *, priority: np.ndarray | None = None, seed: int = 0,
    index_kind: str = "auto", nprobe: int = 16,
) -> NearDupResult:
    """Self near-dedup of `x` [N, D] (L2-normalised): k-NN graph at `threshold`, union-find, keep one per component.

    priority [N]: lower value is kept first within a component (default: row order); ties break
    by row index, so the choice is deterministic.
    """
    n = len(x)
    a, b, s, nn_sim, info = knn_edges(x, k, threshold, seed=seed, index_kind=index_kind, nprobe=nprobe)
    labels = connected_components(n, a, b)
    prio = np.arange(n) if priority is None else np.asarray(priority)
    # The kept row of each component: smallest (priority, index) among its members.
    order = np.lexsort((np.arange(n), prio, labels))
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep = np.zeros(n, bool)
    keep[order[first]] = True
    keeper_of_label = np.full(n, -1, np.int64)
    keeper_of_label[labels[order[first]]] = order[first]
    dup_of = np.where(keep, -1, keeper_of_label[labels])
    return NearDupResult(labels, keep, dup_of, a, b, s, nn_sim, info)


@dataclass
class RelativeDupResult:
    """contaminated: pool rows whose component touches an eval image, [N] bool.
    eval_match: for each pool row, the index of its best-matching eval image at/above the threshold, or -1.
    eval_sim: each pool row's best similarity to any eval image, [N] float32 (-1 with no eval set).
    """

    contaminated: np.ndarray
    eval_match: np.ndarray
    eval_sim: np.ndarray


def relative_duplicates(
    pool: np.ndarray, eval_x: np.ndarray, threshold: float, *, labels: np.ndarray | None = None,
    k: int = 1, seed: int = 0,
) -> RelativeDupResult:
    """Drop every pool component that touches an evaluation image at cosine >= threshold.

    pool [N, D], eval_x [M, D] L2-normalised; labels [N]: near-dup components of the pool
    (default: every row its own component).
    """
    n = len(pool)
    eval_sim = np.full(n, -1.0, np.float32)
    eval_match = np.full(n, -1, np.int64)
    if n == 0 or len(eval_x) == 0:
        return RelativeDupResult(np.zeros(n, bool), eval_match, eval_sim)
    sims, ids = knnlib.knn(eval_x, pool, max(1, k), seed=seed)
    eval_sim = sims[:, 0].astype(np.float32)
    hit = eval_sim >= threshold
    eval_match = np.where(hit, ids[:, 0], -1)
    labels = np.arange(n) if labels is None else np.asarray(labels)
    bad_components = np.unique(labels[hit])
    contaminated = np.isin(labels, bad_components)
    return RelativeDupResult(contaminated, eval_match, eval_sim)
