"""Fast fp32 scores, exact decisions: what makes curation independent of the number of processes.

A GEMM's float32 result depends on its shape, kernel and device (a 1-row product takes another
code path than a 7-row one), and the rows a process multiplies depend on how the pool is split.
So GEMM scores only *propose* candidates: every decision (an edge above a threshold, a nearest
centroid, a top-k) and every value written to the manifest is recomputed exactly for the
candidates that fp32 cannot separate, with one fixed float64 routine per pair. Two candidates
whose fp32 scores differ by more than `margin` are ordered the same by any summation order:
|fl32(x·y) − x·y| ≤ d·2⁻²⁴·‖x‖‖y‖ for any order of the d products (Higham, γ_d), and `margin`
covers that error on both sides.

Shapes: queries `q` [B, D], database `x` [N, D], float32; scores [B, N].
"""

from __future__ import annotations

import numpy as np

U32 = 2.0**-24  # unit roundoff of float32
PAIR_BLOCK = 8192  # pairs per float64 block (bounds the temporary)


def margin(dim: int, q_norm: float, x_norm: float, extra: float = 0.0) -> float:
    """Twice the worst-case fp32 error of a dot product of vectors with these norms, plus `extra` (offsets)."""
    return 2.0 * ((dim + 4) * U32 * q_norm * x_norm + (dim + 4) * U32 * extra) + 1e-12


def exact_dot(q: np.ndarray, x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """q[rows[i]] · x[cols[i]] in float64, one fixed routine per pair: [P] float64.

    The float32 products are exact in float64; numpy's pairwise sum over a row of fixed length
    adds them in an order that depends only on D, so a pair gets the same value wherever and
    with whatever else it is computed.
    """
    out = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), PAIR_BLOCK):
        a = q[rows[s : s + PAIR_BLOCK]].astype(np.float64)
        b = x[cols[s : s + PAIR_BLOCK]].astype(np.float64)
        out[s : s + PAIR_BLOCK] = (a * b).sum(axis=1)
    return out


def half_sq_norms(c: np.ndarray) -> np.ndarray:
    """‖c_j‖²/2 in float64 (the same fixed routine as `exact_dot`): [K]."""
    c64 = c.astype(np.float64)
    return (c64 * c64).sum(axis=1) / 2.0


def _lex_first_k(rows: np.ndarray, vals: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first k entries per row by (value desc, col asc)."""
    order = np.lexsort((cols, -vals, rows))
    r = rows[order]
    start = np.searchsorted(r, r, side="left")
    rank = np.arange(len(r)) - start
    return order[rank < k]


def topk_exact(
    scores, k: int, tol: float, exact_fn, *, values: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Certified top-k per row of fp32 `scores` (torch [B, N]): by exact score desc, then column asc.

    exact_fn(rows, cols) → float64 exact scores of those pairs. Returns (rows, cols, exact values;
    NaN when `values` is False), min(k, N) entries per row, sorted by row then rank. Rows whose
    k+1 best fp32 scores are all more than `tol` apart need no rescoring to be ordered; the
    others are rescored over every column within `tol` of their k-th best.
    """
    import torch

    b, n = scores.shape
    k = min(k, n)
    if b == 0 or k == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float64)
    top_v, top_i = torch.topk(scores, min(k + 1, n), dim=1, sorted=True)
    v, i = top_v.cpu().numpy().astype(np.float64), top_i.cpu().numpy().astype(np.int64)
    amb = (v[:, :-1][:, :k] - v[:, 1:][:, :k] <= tol).any(axis=1) if v.shape[1] > 1 else np.zeros(b, bool)
    clear = np.flatnonzero(~amb)
    rows = [np.repeat(clear, k)]
    cols = [i[clear, :k].ravel()]
    ranks = [np.tile(np.arange(k), len(clear))]
    vals = [exact_fn(rows[0], cols[0]) if values else np.full(len(rows[0]), np.nan)]
    hard = np.flatnonzero(amb)
    if len(hard):
        sub = scores[torch.from_numpy(hard).to(scores.device)]
        kth = torch.from_numpy(v[hard, k - 1] - tol).to(scores.device, scores.dtype)
        r, c = torch.nonzero(sub >= kth[:, None], as_tuple=True)
        hr, hc = hard[r.cpu().numpy()], c.cpu().numpy().astype(np.int64)
        hv = exact_fn(hr, hc)
        first = _lex_first_k(hr, hv, hc, k)
        order = first[np.lexsort((hc[first], -hv[first], hr[first]))]
        hr, hc, hv = hr[order], hc[order], hv[order]
        start = np.searchsorted(hr, hr, side="left")
        rows.append(hr)
        cols.append(hc)
        ranks.append(np.arange(len(hr)) - start)
        vals.append(hv)
    rows_, cols_, ranks_, vals_ = (np.concatenate(a) for a in (rows, cols, ranks, vals))
    o = np.lexsort((ranks_, rows_))
    return rows_[o], cols_[o], vals_[o]


def argmax_exact(scores, tol: float, exact_fn) -> np.ndarray:
    """Certified argmax per row of fp32 `scores` (torch [B, N]); exact ties go to the lower column. [B] int64."""
    _, cols, _ = topk_exact(scores, 1, tol, exact_fn, values=False)
    return cols


def pairs_above(
    scores, threshold: float, tol: float, exact_fn, exclude=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (row, col) whose exact score is >= threshold: (rows, cols, exact values).

    `exclude` (torch bool [B, N] or None) removes pairs before rescoring (self matches).
    """
    import torch

    cand = scores >= (threshold - tol)
    if exclude is not None:
        cand &= ~exclude
    r, c = torch.nonzero(cand, as_tuple=True)
    rows, cols = r.cpu().numpy().astype(np.int64), c.cpu().numpy().astype(np.int64)
    vals = exact_fn(rows, cols)
    ok = vals >= threshold
    return rows[ok], cols[ok], vals[ok]
