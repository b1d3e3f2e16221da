"""Cosine k-NN over L2-normalised embeddings with faiss, index chosen by pool size.

Small pools use an exact inner-product index (`IndexFlatIP`); above `ivf_threshold` vectors an
inverted-file index (`IndexIVFFlat`, inner product, `nlist ≈ 4·sqrt(N)` lists, `nprobe` lists
searched per query) trades a little recall for a large speed-up. Near-duplicate neighbours sit
in the same or adjacent Voronoi cells, so a modest `nprobe` finds them. GPU faiss is used when
the installed faiss sees a GPU.

All inputs are float32 `[N, D]` rows that are already L2-normalised, so inner product = cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

IVF_THRESHOLD = 50_000


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def as_f32(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy-if-needed of `x` (faiss requires it)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of `x` [N, D] scaled to unit L2 norm (zero rows stay zero)."""
    x = as_f32(x)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, eps)


@dataclass
class IndexInfo:
    kind: str  # "flat" or "ivf"
    nlist: int = 0
    nprobe: int = 0
    gpu: bool = False

    def as_dict(self) -> dict:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "gpu": self.gpu}


def build_index(
    x: np.ndarray,
    *,
    kind: str = "auto",
    ivf_threshold: int = IVF_THRESHOLD,
    nlist: int | None = None,
    nprobe: int = 16,
    seed: int = 0,
):
    """Build an inner-product index over `x` [N, D]. Returns (index, IndexInfo).

    kind: "auto" (flat below `ivf_threshold` rows, IVF above), "flat" or "ivf".
    """
    faiss = _faiss()
    x = as_f32(x)
    n, d = x.shape
    if kind == "auto":
        kind = "ivf" if n >= ivf_threshold else "flat"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        info = IndexInfo("flat")
    elif kind == "ivf":
        nlist = int(nlist or max(1, min(n // 39, int(4 * np.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # Train on every point up to faiss' comfortable limit; the default would sample 256/list.
        index.cp.max_points_per_centroid = max(256, (n + nlist - 1) // nlist)
        index.train(x)
        index.nprobe = min(nprobe, nlist)
        info = IndexInfo("ivf", nlist=nlist, nprobe=index.nprobe)
    else:
        raise ValueError(f"unknown index kind {kind!r}; use 'auto', 'flat' or 'ivf'")
    if gpu_available():
        index = faiss.index_cpu_to_all_gpus(index)
        info.gpu = True
    index.add(x)
    return index, info


def search(index, queries: np.ndarray, k: int, batch_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of the index for each query: (sims [Q, k] float32, ids [Q, k] int64; -1 = none)."""
    q = as_f32(queries)
    k = int(min(k, index.ntotal)) if index.ntotal else 0
    if k == 0 or len(q) == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    sims, ids = [], []
    for s in range(0, len(q), batch_size):
        d, i = index.search(q[s : s + batch_size], k)
        sims.append(d)
        ids.append(i)
    return np.concatenate(sims), np.concatenate(ids)


def iter_knn(
    index, queries: np.ndarray, k: int, batch_size: int = 65_536
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Batched search yielding (start row, sims [b, k], ids [b, k]) so callers can filter as they go."""
    q = as_f32(queries)
    k = int(min(k, index.ntotal))
    for s in range(0, len(q), batch_size):
        d, i = index.search(q[s : s + batch_size], k)
        yield s, d, i


def knn(x: np.ndarray, queries: np.ndarray, k: int, **index_kw) -> tuple[np.ndarray, np.ndarray]:
    """One-shot: index `x`, search `queries`. Returns (sims [Q, k], ids [Q, k])."""
    index, _ = build_index(x, **index_kw)
    return search(index, queries, k)
