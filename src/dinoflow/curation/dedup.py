"""Duplicate removal over rows spread across ranks: exact (pixel hash), near (graph components), relative.

The DINOv2 LVD-142M recipe: embed every image, link each to its nearest neighbours whose cosine
similarity is at least a threshold (`ivf.near_duplicate_graph`), take the connected components and
keep one image per component (the first in source order, i.e. the smallest global id). Relative
dedup drops every pool component that touches an evaluation image. Rows are identified by their
global id (gid, the position in source order), so every result is the same for any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoflow.curation.exact import exact_dot, margin, topk_exact
from dinoflow.curation.groups import first_in_group
from dinoflow.curation.ivf import Graph, near_duplicate_graph
from dinoflow.distributed.comm import Comm


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


def component_labels(gid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component of each gid (its smallest gid) in the graph of gid edges (a, b): [n] int64.

    Only the nodes that have an edge enter the union-find, so its memory follows the edges, not the pool.
    """
    nodes = np.unique(np.concatenate([a, b]))
    roots = connected_components(len(nodes), np.searchsorted(nodes, a), np.searchsorted(nodes, b))
    labels = np.asarray(gid, np.int64).copy()
    pos = np.searchsorted(nodes, labels)
    inside = (
        (pos < len(nodes)) & (nodes[np.minimum(pos, len(nodes) - 1)] == labels)
        if len(nodes)
        else np.zeros(len(labels), bool)
    )
    labels[inside] = nodes[roots[pos[inside]]]
    return labels


def exact_duplicate_of(comm: Comm, hashes: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """For each local row, the gid of the first row (any rank) with the same pixel hash: [n] int64.

    hashes [n, 2] int64 (128 bits of the pixel sha256). A row is an exact duplicate when the
    result is not its own gid.
    """
    return first_in_group(comm, hashes, gid)


@dataclass
class NearDup:
    """labels: component (smallest gid) of each local row; keep: the one kept row per component;
    dup_of: the kept gid of each dropped row (-1 for kept rows); graph: the edges found."""

    labels: np.ndarray
    keep: np.ndarray
    dup_of: np.ndarray
    graph: Graph

    @property
    def index(self) -> dict:
        return self.graph.index


def near_duplicates(comm: Comm, x: np.ndarray, gid: np.ndarray, *, k: int, threshold: float, **search) -> NearDup:
    """Self near-dedup of every rank's rows x [n, D] (L2-normalised): keep the first row of each component."""
    g = near_duplicate_graph(comm, x, gid, k=k, threshold=threshold, **search)
    labels = component_labels(gid, g.a, g.b)
    keep = labels == gid
    return NearDup(labels, keep, np.where(keep, -1, labels), g)


@dataclass
class RelativeDup:
    """contaminated [n] bool: rows whose component touches an eval image; eval_match [n]: best eval
    index at/above the threshold or -1; eval_sim [n] float32: best cosine to any eval image (-1: no eval set)."""

    contaminated: np.ndarray
    eval_match: np.ndarray
    eval_sim: np.ndarray


def best_match(comm: Comm, x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar reference row, certified: (index [n] int64, exact cosine [n] float64)."""
    import torch

    n = len(x)
    idx, sim = np.full(n, -1, np.int64), np.full(n, -1.0)
    if n == 0 or len(ref) == 0:
        return idx, sim
    rt = torch.from_numpy(np.ascontiguousarray(ref)).to(comm.device)
    tol = margin(x.shape[1], 1.0, 1.0)
    for s in range(0, n, 8192):
        xb = x[s : s + 8192]
        scores = torch.from_numpy(np.ascontiguousarray(xb)).to(comm.device) @ rt.T
        r, c, v = topk_exact(scores, 1, tol, lambda rr, cc, xb=xb: exact_dot(xb, ref, rr, cc))
        idx[s + r], sim[s + r] = c, v
    return idx, sim


def relative_duplicates(
    comm: Comm, x: np.ndarray, labels: np.ndarray, eval_x: np.ndarray, threshold: float
) -> RelativeDup:
    """Drop every component (labels [n], from `near_duplicates`) that touches an eval row at cosine >= threshold.

    eval_x [M, D] is held by every rank.
    """
    match, sim = best_match(comm, x, eval_x)
    hit = sim >= threshold
    bad = np.unique(comm.all_gather_cat(np.asarray(labels, np.int64)[hit]))
    contaminated = np.isin(labels, bad)
    return RelativeDup(contaminated, np.where(hit, match, -1), sim.astype(np.float32))
