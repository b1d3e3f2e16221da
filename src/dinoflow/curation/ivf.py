"""The near-duplicate graph over rows spread across ranks: an inverted file searched list by list.

1. A coarse quantizer of `nlist` centroids, built from a seeded sample of the rows (`quantizer`:
   the sample itself, or k-means on it); 1 list, i.e. exact search, below `ivf_threshold`.
2. Every row gets the `nprobe` lists it probes (`probe.probe_lists`, certified); the first is its home.
3. Lists are owned by ranks (`list % world`). In rounds that bound memory, every rank sends each
   row to the owner of its home list (as a member) and to the owners of its probed lists (as a
   query); the owner scores each list's queries against its members with one GEMM and keeps the
   pairs whose exact cosine is >= the threshold. Cost per list: |queries|·|members|·D, about
   nprobe·N²/nlist·D in all, against the quantizer's N·nlist·D (`choose_nlist`).
4. The edges (a few per duplicate) are gathered on every rank; each row keeps its k most similar
   (exact cosine desc, then gid), as a k-NN graph at the threshold would.

Memory per rank: its own rows (4·D bytes each) plus, within a round, the rows it owns lists for
(4·D bytes per member and per probe). Rows are L2-normalised float32 [n, D]; gids are global ids.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from dinoflow.curation import seeded
from dinoflow.curation.exact import exact_dot, margin, pairs_above
from dinoflow.curation.groups import bottom_k_global
from dinoflow.curation.kmeans import kmeans
from dinoflow.curation.probe import probe_lists
from dinoflow.distributed.comm import Comm

QUERY_BLOCK = 4096
MEMBER_BLOCK = 16384


@dataclass
class Graph:
    """a, b: gids with a < b; sim: exact cosine (float32); nn_sim: each local row's best cosine to another row (-1: none)."""

    a: np.ndarray
    b: np.ndarray
    sim: np.ndarray
    nn_sim: np.ndarray
    index: dict = field(default_factory=dict)


def choose_nlist(n_all: int, nprobe: int, ivf_threshold: int, nlist: int | None) -> int:
    """1 (exact search) below the threshold, else `nlist` or about 1.5·sqrt(nprobe·N), at least 39 rows per list.

    The search scores about nprobe·N²/nlist pairs (times the lists' imbalance, about 2 for lists
    centred on sampled rows) and the probing N·nlist: the sum is smallest near sqrt(2·nprobe·N).
    """
    if n_all < ivf_threshold:
        return 1
    auto = nlist or round(1.5 * math.sqrt(max(1, nprobe) * n_all))
    return int(max(1, min(auto, n_all // 39)))


def _rounds(cost: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive lists grouped so each group's rows stay within `budget` (a bigger list is a group alone)."""
    groups: list[np.ndarray] = []
    start, acc = 0, 0
    for i, c in enumerate(cost):
        if acc and acc + c > budget:
            groups.append(np.arange(start, i))
            start, acc = i, 0
        acc += int(c)
    if start < len(cost):
        groups.append(np.arange(start, len(cost)))
    return groups


def _best_other(scores, q_gid: np.ndarray, m_gid: np.ndarray, tol: float, exact) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best exact cosine to a member other than itself, certified: ([B] float64, -inf if none;
    [B] fp32 best, for the edge pre-filter). One top-3 pass over the block; rows whose best two
    other members are within `tol` are rescored over every column within `tol` of the best."""
    import torch

    b, n = scores.shape
    best = np.full(b, -np.inf)
    if n == 0:
        return best, best.astype(np.float32)
    top_v, top_i = torch.topk(scores, min(3, n), dim=1)
    v, i = top_v.cpu().numpy().astype(np.float64), top_i.cpu().numpy().astype(np.int64)
    v[m_gid[i] == q_gid[:, None]] = -np.inf
    order = np.argsort(-v, axis=1, kind="stable")
    v, i = np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1)
    top, nxt = v[:, 0], (v[:, 1] if v.shape[1] > 1 else np.full(b, -np.inf))
    has = np.isfinite(top)
    gap = np.full(b, -np.inf)
    gap[has] = top[has] - np.where(np.isfinite(nxt[has]), nxt[has], top[has] - 2 * tol - 1)
    clear = np.flatnonzero(has & (gap > tol))
    best[clear] = exact(clear, i[clear, 0])
    hard = np.flatnonzero(has & (gap <= tol))
    if len(hard):
        sub = scores[torch.from_numpy(hard)]
        near = sub >= torch.from_numpy(top[hard] - tol).to(sub.dtype)[:, None]
        r, c = torch.nonzero(near, as_tuple=True)
        rows, cols = hard[r.numpy()], c.numpy().astype(np.int64)
        ok = m_gid[cols] != q_gid[rows]
        np.maximum.at(best, rows[ok], exact(rows[ok], cols[ok]))
    return best, top.astype(np.float32)


def _score_list(q: np.ndarray, qg: np.ndarray, m: np.ndarray, mg: np.ndarray, threshold: float, device: str):
    """Edges and each query's best similarity within one list: (qi, mi, sim, best [len(q)] float64).

    Per block: one GEMM and one top-3 pass; only queries whose best other member reaches the
    threshold (within the fp32 error) are scanned for every such member.
    """
    import torch

    best = np.full(len(q), -np.inf)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    tol = margin(q.shape[1], 1.0, 1.0)
    for qs in range(0, len(q), QUERY_BLOCK):
        qb, qgb = q[qs : qs + QUERY_BLOCK], qg[qs : qs + QUERY_BLOCK]
        qt = torch.from_numpy(qb).to(device)
        for ms in range(0, len(m), MEMBER_BLOCK):
            mb, mgb = m[ms : ms + MEMBER_BLOCK], mg[ms : ms + MEMBER_BLOCK]
            scores = (qt @ torch.from_numpy(mb).to(device).T).cpu()

            def exact(r: np.ndarray, c: np.ndarray, qb=qb, mb=mb) -> np.ndarray:
                return exact_dot(qb, mb, r, c)

            b_exact, b_fp32 = _best_other(scores, qgb, mgb, tol, exact)
            blk = best[qs : qs + len(qb)]
            np.maximum(blk, b_exact, out=blk)
            hot = np.flatnonzero(b_fp32 >= threshold - tol)
            if len(hot):
                r, c, v = pairs_above(
                    scores[torch.from_numpy(hot)], threshold, tol, lambda rr, cc, hot=hot: exact(hot[rr], cc)
                )
                ok = mgb[c] != qgb[hot[r]]
                parts.append((hot[r][ok] + qs, c[ok] + ms, v[ok]))
    qi = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    mi = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    sim = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    return qi, mi, sim, best


def map_lists(fn, items, device: str):
    """fn over lists, in order. On CPU the lists are spread over the cores, each list's ops on one
    thread: a list's GEMM is small, and multi-threading small ops costs more in synchronisation
    than it gains (badly so on a busy machine)."""
    import torch

    if device != "cpu" or torch.get_num_threads() == 1:
        yield from map(fn, items)
        return

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from pool.map(fn, items)
    finally:
        torch.set_num_threads(threads)


def _search_round(comm: Comm, x, gid, home, probes, lists: np.ndarray, n_lists: int, threshold: float):
    """One round: route members and queries of `lists` to their owners, score, route answers back."""
    in_round = np.zeros(n_lists, bool)
    in_round[lists] = True
    mem = np.flatnonzero(in_round[home])
    (m_list, m_gid, m_x), _ = comm.all_to_all([home[mem], gid[mem], x[mem]], home[mem] % comm.world)
    q_row, q_j = np.nonzero(in_round[probes])
    q_dest = probes[q_row, q_j] % comm.world
    (r_list, r_gid, r_x), src = comm.all_to_all([probes[q_row, q_j], gid[q_row], x[q_row]], q_dest)
    mo, qo = np.lexsort((m_gid, m_list)), np.lexsort((r_gid, r_list))
    best = np.full(len(r_list), -np.inf)
    edges: list[np.ndarray] = []
    m_bounds = np.searchsorted(m_list[mo], lists, side="left"), np.searchsorted(m_list[mo], lists, side="right")
    q_bounds = np.searchsorted(r_list[qo], lists, side="left"), np.searchsorted(r_list[qo], lists, side="right")

    def one(j: int):
        mi, qi = mo[m_bounds[0][j] : m_bounds[1][j]], qo[q_bounds[0][j] : q_bounds[1][j]]
        if not len(mi) or not len(qi):
            return qi, None
        return qi, (mi, _score_list(r_x[qi], r_gid[qi], m_x[mi], m_gid[mi], threshold, comm.device))

    for qi, res in map_lists(one, range(len(lists)), comm.device):
        if res is not None:
            mi, (a, b, s, bst) = res
            best[qi] = bst
            edges.append(np.stack([r_gid[qi][a], m_gid[mi][b], s.view(np.int64)], axis=1))
    (back,) = comm.send_back([best], src, q_dest)
    return q_row, back, (np.concatenate(edges) if edges else np.zeros((0, 3), np.int64))


def _top_k_edges(e: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's k best edges (sim desc, then gid), as undirected (a < b) unique pairs."""
    q, m, s = e[:, 0], e[:, 1], e[:, 2].view(np.float64)
    order = np.lexsort((m, -s, q))
    qs = q[order]
    first = np.ones(len(order), bool)
    first[1:] = qs[1:] != qs[:-1]
    rank = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    keep = order[rank < k]
    a, b, s = np.minimum(q[keep], m[keep]), np.maximum(q[keep], m[keep]), s[keep]
    pairs, idx = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return pairs[:, 0], pairs[:, 1], s[idx].astype(np.float32)


def quantizer(
    comm: Comm, x: np.ndarray, gid: np.ndarray, n_lists: int, *, iters: int, train_per_list: int, seed: int
) -> np.ndarray:
    """The IVF lists' centroids [L, D]: with `iters` 0, the L rows with the smallest seeded hash of
    their gid (a uniform sample of the pool); else k-means (`iters` Lloyd iterations on a sample of
    `train_per_list` rows per list). Sampled rows follow the pool's density, so their lists are
    more even than trained ones, and the search costs the sum over lists of queries × members."""
    if iters > 0:
        return kmeans(
            comm,
            x,
            gid,
            n_lists,
            iters=iters,
            seed=seed + 7,
            max_points_per_centroid=train_per_list,
            assign_all=False,
            progress="curate: IVF quantizer",
        ).centroids
    key = seeded.row_hash(seed, seeded.IVF_TRAIN, gid)
    mine = bottom_k_global(comm, key, gid, n_lists)
    keys = comm.all_gather_cat(gid[mine])
    rows = comm.all_gather_cat(x[mine].reshape(-1, x.shape[1]))
    return np.ascontiguousarray(rows[np.argsort(keys, kind="stable")], dtype=np.float32)


def _flat_graph(comm: Comm, x: np.ndarray, gid: np.ndarray, *, k: int, threshold: float, info: dict) -> Graph:
    """Exact search for small pools: every rank scores its own rows against all rows (gathered)."""
    all_x, all_gid = comm.all_gather_cat(x), comm.all_gather_cat(gid)
    qi, mi, s, best = _score_list(x, gid, all_x, all_gid, threshold, comm.device)
    e = np.stack([gid[qi], all_gid[mi], s.view(np.int64)], axis=1) if len(qi) else np.zeros((0, 3), np.int64)
    a, b, sim = _top_k_edges(comm.all_gather_cat(e), k)
    return Graph(a, b, sim, np.where(np.isfinite(best), best, -1.0).astype(np.float32), info)


def near_duplicate_graph(
    comm: Comm,
    x: np.ndarray,
    gid: np.ndarray,
    *,
    k: int,
    threshold: float,
    nprobe: int = 16,
    ivf_threshold: int = 50_000,
    nlist: int | None = None,
    train_per_list: int = 64,
    iters: int = 0,
    seed: int = 0,
    round_rows: int = 1 << 20,
) -> Graph:
    """Edges (cosine >= threshold, at most k per row) among the rows of every rank, identical on every rank."""
    from tqdm import tqdm

    x = np.ascontiguousarray(x, dtype=np.float32)
    n_all = comm.sum_int(len(x))
    n_lists = choose_nlist(n_all, nprobe, ivf_threshold, nlist)
    info: dict = {"kind": "flat" if n_lists == 1 else "ivf", "nlist": n_lists}
    if n_lists > 1:
        centroids = quantizer(comm, x, gid, n_lists, iters=iters, train_per_list=train_per_list, seed=seed)
        n_lists = len(centroids)
        probes = probe_lists(comm, x, centroids, nprobe)
        info.update(
            nlist=n_lists,
            nprobe=probes.shape[1],
            train_iters=iters,
            **({"train_per_list": train_per_list} if iters else {}),
        )
    else:
        probes = np.zeros((len(x), 1), np.int64)  # unused: exact search below
    if n_lists == 1:
        return _flat_graph(comm, x, gid, k=k, threshold=threshold, info=info)
    home = probes[:, 0]
    cost = comm.all_reduce_sum(np.bincount(probes.ravel(), minlength=n_lists) + np.bincount(home, minlength=n_lists))
    rounds = _rounds(cost, round_rows * comm.world)
    info["rounds"] = len(rounds)
    nn = np.full(len(x), -np.inf)
    found: list[np.ndarray] = []
    for lists in tqdm(
        rounds, desc="curate: near-dup search", unit="round", disable=not comm.is_main or len(rounds) < 2
    ):
        rows, best, e = _search_round(comm, x, gid, home, probes, lists, n_lists, threshold)
        np.maximum.at(nn, rows, best)
        found.append(e)
    edges = comm.all_gather_cat(np.concatenate(found) if found else np.zeros((0, 3), np.int64))
    a, b, s = _top_k_edges(edges, k)
    nn_sim = np.where(np.isfinite(nn), nn, -1.0).astype(np.float32)
    return Graph(a, b, s, nn_sim, info)
