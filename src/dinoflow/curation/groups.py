"""Per-group selections over rows spread across ranks, routed to one owner rank per group.

Every decision "the b smallest of this group" (resampling's closest points, balanced sampling's
draws, a seed's nearest pool images, a cluster's cap) and "the first row of this group" (exact
dedup) is made by the group's owner (`group % world`) on the full set of that group's candidates,
ordered by (key, gid). Nothing depends on which rank held a row, so the result is the same for
any number of processes; only candidates that can still win travel.
"""

from __future__ import annotations

import numpy as np

from dinoflow.distributed.comm import Comm


def _first_per_group(group_sorted: np.ndarray) -> np.ndarray:
    first = np.ones(len(group_sorted), bool)
    first[1:] = group_sorted[1:] != group_sorted[:-1]
    return first


def _rank_in_group(group_sorted: np.ndarray) -> np.ndarray:
    """0, 1, 2, … within each run of equal values of an already sorted group array."""
    idx = np.arange(len(group_sorted))
    starts = np.maximum.accumulate(np.where(_first_per_group(group_sorted), idx, 0))
    return idx - starts


def select_smallest(comm: Comm, group: np.ndarray, key: np.ndarray, gid: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Mask [n] of the local candidates among the `budget[group]` smallest (key, gid) of their group.

    group [n] int64 (0 <= group < len(budget)), key [n] int64 or float64 (exact values), gid [n]
    int64 (the tie-break; a (group, gid) pair may appear once). budget [G] int64, the same on every rank.
    """
    group, gid = np.asarray(group, np.int64), np.asarray(gid, np.int64)
    budget = np.asarray(budget, np.int64)
    n = len(group)
    # Local pre-filter: a candidate that is not among its group's b smallest here cannot win globally.
    order = np.lexsort((gid, key, group))
    local_ok = np.zeros(n, bool)
    local_ok[order[_rank_in_group(group[order]) < budget[group[order]]]] = True
    cand = np.flatnonzero(local_ok)
    dest = group[cand] % comm.world
    (g, k, i), src = comm.all_to_all([group[cand], np.asarray(key)[cand], gid[cand]], dest)
    o = np.lexsort((i, k, g))
    won = np.zeros(len(g), bool)
    won[o[_rank_in_group(g[o]) < budget[g[o]]]] = True
    (won_back,) = comm.send_back([won], src, dest)
    out = np.zeros(n, bool)
    out[cand[won_back]] = True
    return out


def first_in_group(comm: Comm, group: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """For each local row, the smallest gid of its group over all ranks: [n] int64.

    group [n, c] int64 (a multi-column key, e.g. a 128-bit hash as two columns), gid [n] int64.
    """
    group = np.asarray(group, np.int64).reshape(len(gid), -1)
    gid = np.asarray(gid, np.int64)
    dest = (group[:, 0] & 0x7FFFFFFFFFFFFFFF) % comm.world
    (g, i), src = comm.all_to_all([group, gid], dest)
    cols = tuple(g[:, j] for j in reversed(range(g.shape[1])))
    o = np.lexsort((i,) + cols)
    gs = g[o]
    first = np.ones(len(o), bool)
    first[1:] = (gs[1:] != gs[:-1]).any(axis=1)
    start_idx = np.maximum.accumulate(np.where(first, np.arange(len(o)), 0))
    smallest = np.empty(len(o), np.int64)
    smallest[o] = i[o][start_idx]
    (back,) = comm.send_back([smallest], src, dest)
    return back


def bottom_k_global(comm: Comm, key: np.ndarray, gid: np.ndarray, k: int) -> np.ndarray:
    """Mask [n] of the local rows among the k smallest (key, gid) over all ranks."""
    n = len(key)
    return select_smallest(comm, np.zeros(n, np.int64), key, gid, np.array([k], np.int64))
