"""Distributed k-means (Lloyd) on torch: every rank assigns its own rows, partial sums are all-reduced.

- Seeding: k-means++ on a sample of 4k rows chosen by a seeded hash of their global id
  (`seeded.row_hash`), so the start does not depend on how rows are split over ranks.
- Partial sums are accumulated in 64-bit fixed point (value · 2^s, rounded once per value), so
  the all-reduced sum is exact and the same in any order: 1 process and N give the same centroids.
- Assignments are certified (`exact.argmax_exact`): fp32 GEMM scores, exact rescoring only where
  the best two centroids are closer than the fp32 error.
- `max_points_per_centroid` (faiss' knob, not its silent default): when set and the pool is larger
  than k times it, the Lloyd iterations run on a seeded sample of about that many rows per
  centroid, then every row is assigned once. None trains on every row.
- GEMMs run on the rank's CUDA device when there is one (TF32 off), else on CPU.

Shapes: x [n, D] float32 (this rank's rows), gid [n] int64 global row ids, centroids [k, D] float32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from dinoflow.curation import seeded
from dinoflow.curation.exact import argmax_exact, exact_dot, half_sq_norms, margin
from dinoflow.curation.groups import bottom_k_global
from dinoflow.distributed.comm import Comm

BLOCK = 8192  # rows per GEMM block
SCORES_PER_BLOCK = 1 << 26  # ... and at most this many scores (256 MiB of fp32) when k is large


def block_rows(k: int) -> int:
    """Rows per GEMM block against k centroids: BLOCK, fewer for very large k."""
    return int(max(64, min(BLOCK, SCORES_PER_BLOCK // max(1, k))))


@dataclass
class KMeans:
    """centroids [k, D]; labels/sq_dist [n] for this rank's rows (None when not assigned); sizes [k] global."""

    centroids: np.ndarray
    labels: np.ndarray | None
    sq_dist: np.ndarray | None
    sizes: np.ndarray
    iterations: int = 0
    train: np.ndarray | None = None  # [n] bool: the local rows the Lloyd iterations ran on

    def assignment(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, sq_dist) [n] of this rank's rows, which a fit with `assign_all` (the default) has."""
        if self.labels is None or self.sq_dist is None:
            raise RuntimeError("this k-means fit ran with assign_all=False: its rows have no labels")
        return self.labels, self.sq_dist


def _torch(a: np.ndarray, device: str):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if device == "cpu" else t.to(device)


def max_norm(x: np.ndarray) -> float:
    """An upper bound of the row norms of x [n, D], for the certification margin."""
    best = 0.0
    for s in range(0, len(x), BLOCK):
        b = x[s : s + BLOCK]
        best = max(best, float(np.einsum("ij,ij->i", b, b).max(initial=0.0)))
    return float(np.sqrt(best)) * (1 + 1e-5) + 1e-30


def assign(
    comm: Comm, x: np.ndarray, c: np.ndarray, *, with_dist: bool = False, x_norm: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest centroid (L2) of each row: (labels [n] int64, exact squared distances [n] float32 or None).

    Scores are x·c − ‖c‖²/2 (one GEMM per block); ties between exactly equidistant centroids go
    to the lower index.
    """
    import torch

    n, d = x.shape
    labels = np.empty(n, np.int64)
    if n == 0:
        return labels, (np.zeros(0, np.float32) if with_dist else None)
    h64 = half_sq_norms(c)
    ct = _torch(np.ascontiguousarray(c.T), comm.device)
    neg_h = _torch(-h64.astype(np.float32), comm.device)
    tol = margin(d, max_norm(x) if x_norm is None else x_norm, float(np.sqrt(2 * h64.max())), extra=float(h64.max()))
    step = block_rows(len(c))
    for s in range(0, n, step):
        xb = x[s : s + step]
        scores = torch.addmm(neg_h, _torch(xb, comm.device), ct)

        def exact(rows: np.ndarray, cols: np.ndarray, xb=xb) -> np.ndarray:
            return exact_dot(xb, c, rows, cols) - h64[cols]

        labels[s : s + step] = argmax_exact(scores, tol, exact)
    return labels, (sq_distances(x, c, labels) if with_dist else None)


def sq_distances(x: np.ndarray, c: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """‖x_i − c_labels[i]‖² computed row by row in a fixed order (the same value in every process): [n] float32."""
    out = np.empty(len(x), np.float32)
    for s in range(0, len(x), BLOCK):
        diff = x[s : s + BLOCK] - c[labels[s : s + BLOCK]]
        out[s : s + BLOCK] = (diff * diff).sum(axis=1)
    return out


class FixedPoint:
    """Rows as exact 64-bit integers (value · 2^s, rounded once), so per-cluster sums are exact in any order.

    s is the largest power of two (at most 2^40) for which the sum of |values| over every row of
    every rank still fits in int64. The global sums are kept between Lloyd iterations and updated
    with the rows that changed cluster only (exact integers: the same as summing again).
    """

    def __init__(self, comm: Comm, x: np.ndarray) -> None:
        n = comm.sum_int(len(x))
        local = float(np.abs(x).max()) if x.size else 0.0
        top = float(comm.all_reduce_max(np.array([local], np.float64))[0]) or 1.0
        self.scale = 2.0 ** min(40, math.floor(62 - math.log2(max(1, n) * top)))
        self.rows = np.rint(x.astype(np.float64) * self.scale).astype(np.int64)
        self.labels: np.ndarray | None = None
        self.sums: np.ndarray | None = None  # [k, D + 1]: global sums and counts

    def _local_sums(self, idx: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
        """[k, D + 1] int64: sums and counts of rows[idx] per label."""
        out = np.zeros((k, self.rows.shape[1] + 1), np.int64)
        if len(idx):
            order = np.argsort(labels, kind="stable")
            lab = labels[order]
            starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
            out[lab[starts], :-1] = np.add.reduceat(self.rows[idx[order]], starts, axis=0)
            out[lab[starts], -1] = np.diff(np.r_[starts, len(lab)])
        return out

    def centroids(self, comm: Comm, labels: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Means of every rank's rows per label; a cluster with no row keeps its previous centroid."""
        k = len(previous)
        if self.sums is None or self.labels is None:
            self.sums = comm.all_reduce_sum(self._local_sums(np.arange(len(labels)), labels, k))
        else:
            moved = np.flatnonzero(labels != self.labels)
            delta = self._local_sums(moved, labels[moved], k) - self._local_sums(moved, self.labels[moved], k)
            self.sums += comm.all_reduce_sum(delta)
        self.labels = labels.copy()
        total, counts = self.sums[:, :-1].astype(np.float64), self.sums[:, -1]
        new = previous.astype(np.float64).copy()
        filled = counts > 0
        new[filled] = total[filled] / self.scale / counts[filled, None]
        return new.astype(np.float32)


INIT_SAMPLE_PER_CENTROID = 4


def _one_thread():
    """torch on one intra-op thread inside the block (the same kernels in every process)."""

    import torch

    @contextlib.contextmanager
    def cm():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    return cm()


PLUS_PLUS_ROUNDS = 32


def kmeans_plus_plus(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (D² sampling, seeded) on `sample` [m, D] → [k, D] centroids.

    Centroids are drawn `k / PLUS_PLUS_ROUNDS` at a time (D² sampling with the distances of the
    previous round, as in k-means||), so the distance updates are GEMMs, not k matrix-vector products.
    """
    import torch

    rng = np.random.default_rng(seed)
    m = len(sample)
    per_round = max(1, -(-k // PLUS_PLUS_ROUNDS))
    with _one_thread():
        xt = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
        xx = (xt * xt).sum(dim=1)

        def dist_to(idx: np.ndarray) -> np.ndarray:
            d = xx[:, None] - 2 * (xt @ xt[idx].T) + xx[idx][None, :]
            return d.clamp_(min=0).min(dim=1).values.numpy().astype(np.float64)

        chosen = [int(rng.integers(m))]
        d2 = dist_to(np.array(chosen))
        while len(chosen) < k:
            d2[chosen] = 0.0
            total = d2.sum()
            want = min(per_round, k - len(chosen))
            if total <= 0:  # every row coincides with a centroid: take unused rows in order
                taken = set(chosen)
                chosen += [i for i in range(m) if i not in taken][:want]
                continue
            draws = np.minimum(m - 1, np.searchsorted(np.cumsum(d2), rng.random(want) * total, side="right"))
            _, first = np.unique(draws, return_index=True)
            new = draws[np.sort(first)]
            chosen += new.tolist()
            np.minimum(d2, dist_to(new), out=d2)
    return np.ascontiguousarray(sample[chosen[:k]], dtype=np.float32)


def init_centroids(comm: Comm, x: np.ndarray, gid: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ on the `INIT_SAMPLE_PER_CENTROID`·k rows with the smallest seeded hash of their gid.

    The sample is the same whatever the split of rows over ranks; rank 0 seeds on it (one thread)
    and every rank takes its centroids, so all ranks start from the same k rows. [k, D].
    """
    key = seeded.row_hash(seed, seeded.KMEANS_INIT, gid)
    m = INIT_SAMPLE_PER_CENTROID * k + 16
    mine = bottom_k_global(comm, key, gid, m)
    keys = comm.all_gather_cat(np.stack([key[mine], gid[mine]], axis=1).reshape(-1, 2))
    rows = comm.all_gather_cat(x[mine].reshape(-1, x.shape[1]))
    sample = rows[np.lexsort((keys[:, 1], keys[:, 0]))]
    c = kmeans_plus_plus(sample, k, seed) if comm.is_main else np.zeros((0, x.shape[1]), np.float32)
    return np.ascontiguousarray(comm.all_gather(c)[0], dtype=np.float32)


def kmeans(
    comm: Comm,
    x: np.ndarray,
    gid: np.ndarray,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = None,
    assign_all: bool = True,
    progress: str | None = None,
) -> KMeans:
    """k-means of the rows of every rank; k is clamped to the number of rows.

    Returns the centroids (identical on every rank), this rank's labels and exact squared
    distances (when `assign_all`), and the global cluster sizes.
    """
    from tqdm import tqdm

    x = np.ascontiguousarray(x, dtype=np.float32)
    n_all = comm.sum_int(len(x))
    if n_all == 0:
        raise ValueError("k-means needs at least one point")
    k = int(max(1, min(k, n_all)))
    c = init_centroids(comm, x, gid, k, seed)
    train = np.ones(len(x), bool)
    if max_points_per_centroid and n_all > max_points_per_centroid * k:
        train = seeded.row_uniform(seed, seeded.KMEANS_TRAIN, gid) < max_points_per_centroid * k / n_all
    xt = np.ascontiguousarray(x[train])
    fixed = FixedPoint(comm, xt)
    xt_norm = max_norm(xt)
    prev = None
    done = 0
    bar = tqdm(total=iters, desc=progress, unit="iter", disable=not (progress and comm.is_main), mininterval=1.0)
    for done in range(1, iters + 1):  # noqa: B007 - read after the loop: the iterations run
        labels, _ = assign(comm, xt, c, x_norm=xt_norm)
        if prev is not None and comm.sum_int(int((labels != prev).sum())) == 0:
            break  # converged: another update would give the same centroids
        c = fixed.centroids(comm, labels, c)
        prev = labels
        bar.update(1)
    bar.close()
    if not assign_all:
        return KMeans(c, None, None, np.zeros(k, np.int64), done, train)
    labels, sq = assign(comm, x, c, with_dist=True)
    sizes = comm.all_reduce_sum(np.bincount(labels, minlength=k).astype(np.int64))
    return KMeans(c, labels, sq, sizes, done, train)


def objective(comm: Comm, km: KMeans) -> float:
    """Sum of squared distances of every row to its centroid (float64; for reports and benchmarks)."""
    local = float(km.sq_dist.astype(np.float64).sum()) if km.sq_dist is not None else 0.0
    return float(comm.all_reduce_sum(np.array([local], np.float64))[0])
