"""Which IVF lists each row probes (its `nprobe` nearest list centroids, L2), certified.

Quantizers below `GROUPED_FROM` lists are scored against every list (one GEMM per block: on a
CPU that is faster than the gathers two levels need until the lists number thousands). Larger
ones (a billion-image pool has about 10^5 lists) are
searched in two levels: the lists are grouped by a k-means of their centroids (about sqrt(L)
groups, the same on every rank), each row scores the groups, then only the lists of its
`GROUPS_PER_ROW` nearest groups — about 4·sqrt(L) scores per row instead of L. The probed lists
are then the nearest among those candidates: a deterministic choice (every comparison fp32
cannot settle is made exactly), not always the global nearest, which IVF does not need.

Shapes: rows x [n, D] float32, list centroids c [L, D]; result [n, min(nprobe, L)] int64, nearest first.
"""

from __future__ import annotations

import math

import numpy as np

from dinoflow.curation.exact import exact_dot, half_sq_norms, margin, topk_exact
from dinoflow.curation.kmeans import BLOCK, block_rows, kmeans, max_norm
from dinoflow.distributed.comm import Comm

GROUPED_FROM = 4096
GROUPS_PER_ROW = 3


def _scores(x, c, neg_h, device: str):
    import torch

    return torch.addmm(
        neg_h,
        torch.from_numpy(np.ascontiguousarray(x)).to(device),
        torch.from_numpy(np.ascontiguousarray(c.T)).to(device),
    )


def nearest_lists(comm: Comm, x: np.ndarray, c: np.ndarray, p: int) -> np.ndarray:
    """The p nearest centroids of each row over all of `c`, certified: [n, min(p, L)] int64."""
    import torch

    p = min(p, len(c))
    out = np.empty((len(x), p), np.int64)
    h64 = half_sq_norms(c)
    neg_h = torch.from_numpy(-h64.astype(np.float32)).to(comm.device)
    tol = margin(x.shape[1], max_norm(x), float(np.sqrt(2 * h64.max())), extra=float(h64.max()))
    step = block_rows(len(c))
    for s in range(0, len(x), step):
        xb = x[s : s + step]
        _, cols, _ = topk_exact(
            _scores(xb, c, neg_h, comm.device),
            p,
            tol,
            lambda r, cc, xb=xb: exact_dot(xb, c, r, cc) - h64[cc],
            values=False,
        )
        out[s : s + len(xb)] = cols.reshape(len(xb), p)
    return out


def _group_candidates(comm: Comm, x, c, top_groups, members, p: int):
    """fp32 scores and ids of the p+1 best lists of each of a row's groups: ([n, g·(p+1)] each)."""
    import torch

    n, g = top_groups.shape
    vals = np.full((n, g, p + 1), -np.inf)
    ids = np.full((n, g, p + 1), -1, np.int64)
    neg_h = -half_sq_norms(c).astype(np.float32)
    for h, lists in enumerate(members):
        rows, slot = np.nonzero(top_groups == h)
        if not len(rows) or not len(lists):
            continue
        kk = min(p + 1, len(lists))
        nh = torch.from_numpy(neg_h[lists]).to(comm.device)
        for s in range(0, len(rows), BLOCK):
            r, sl = rows[s : s + BLOCK], slot[s : s + BLOCK]
            v, i = torch.topk(_scores(x[r], c[lists], nh, comm.device), kk, dim=1)
            vals[r, sl, :kk] = v.cpu().numpy()
            ids[r, sl, :kk] = lists[i.cpu().numpy()]
    return vals.reshape(n, -1), ids.reshape(n, -1)


def probe_lists(comm: Comm, x: np.ndarray, c: np.ndarray, nprobe: int) -> np.ndarray:
    """The lists each row probes, nearest first: [n, min(nprobe, L)] int64 (see the module docstring)."""
    n_lists = len(c)
    p = min(nprobe, n_lists)
    if n_lists < GROUPED_FROM:
        return nearest_lists(comm, x, c, p)
    grouping = kmeans(Comm(device=comm.device), c, np.arange(n_lists), round(math.sqrt(n_lists)), iters=10, seed=0)
    members = [np.flatnonzero(grouping.labels == h) for h in range(len(grouping.centroids))]
    top_groups = nearest_lists(comm, x, grouping.centroids, GROUPS_PER_ROW)
    vals, ids = _group_candidates(comm, x, c, top_groups, members, p)
    order = np.argsort(-vals, axis=1, kind="stable")[:, : p + 1]
    v = np.take_along_axis(vals, order, 1)
    out = np.take_along_axis(ids, order, 1)[:, :p]
    h64 = half_sq_norms(c)
    tol = margin(x.shape[1], max_norm(x), float(np.sqrt(2 * h64.max())), extra=float(h64.max()))
    with np.errstate(invalid="ignore"):
        unsure = (
            np.flatnonzero(((v[:, :-1] - v[:, 1:]) <= tol).any(axis=1)) if v.shape[1] > 1 else np.zeros(0, np.int64)
        )
    for r in unsure:  # fp32 cannot order this row's best lists: score its candidates exactly
        cand = np.unique(np.concatenate([members[h] for h in top_groups[r]]))
        exact = exact_dot(x, c, np.full(len(cand), r), cand) - h64[cand]
        out[r] = cand[np.lexsort((cand, -exact))[:p]]
    return out
