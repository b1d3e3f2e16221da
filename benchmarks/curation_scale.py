"""Curation at scale: near dedup (IVF k-NN + union-find), hierarchical k-means, balanced sampling.

    python benchmarks/curation_scale.py            # 1,000,000 synthetic 256-d embeddings
    python benchmarks/curation_scale.py --n 200000 --k 64

The embeddings are a clustered mixture (skewed concept sizes) with planted near-duplicates, so
the dedup step has real work and a known answer. Prints seconds per step and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synthetic(n: int, dim: int, n_concepts: int, dup_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """Unit vectors from a Zipf-sized mixture; the last `dup_fraction` of rows are noisy copies of earlier rows."""
    rng = np.random.default_rng(seed)
    n_dup = int(n * dup_fraction)
    n_base = n - n_dup
    sizes = 1.0 / np.arange(1, n_concepts + 1) ** 0.8
    comp = rng.choice(n_concepts, size=n_base, p=sizes / sizes.sum())
    centres = rng.standard_normal((n_concepts, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n_base, 200_000):  # in blocks: keep the temporaries small
        e = min(n_base, s + 200_000)
        x[s:e] = centres[comp[s:e]] + 0.9 * rng.standard_normal((e - s, dim)).astype(np.float32) / np.sqrt(dim)
    src = rng.choice(n_base, size=n_dup, replace=False)
    x[n_base:] = x[src] + 0.05 * rng.standard_normal((n_dup, dim)).astype(np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, n_dup


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=64, help="neighbours per image in near dedup")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--levels", type=str, default="", help="comma-separated clusters per level (default: ~n/100, ~n/2000, 20)")
    p.add_argument("--resampling-steps", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--target", type=int, default=0, help="balanced sample size (default n/4)")
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import faiss

    from dinoflow.curation.cluster import hierarchical_kmeans
    from dinoflow.curation.dedup import near_duplicates
    from dinoflow.curation.sample import balance_entropy, balanced_sample

    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    levels = [int(v) for v in a.levels.split(",")] if a.levels else [max(10, a.n // 100), max(5, a.n // 2000), 20]
    target = a.target or a.n // 4
    print(f"n={a.n:,} dim={a.dim} k={a.k} threshold={a.threshold} nprobe={a.nprobe} levels={levels} "
          f"resampling={a.resampling_steps} iters={a.iters} target={target:,} faiss threads={faiss.omp_get_max_threads()}")
    t = time.perf_counter()
    x, n_dup = synthetic(a.n, a.dim, n_concepts=max(10, a.n // 1000), dup_fraction=0.05, seed=a.seed)
    print(f"synthetic data      {time.perf_counter() - t:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB", flush=True)

    t = time.perf_counter()
    nd = near_duplicates(x, a.k, a.threshold, seed=a.seed, index_kind="auto", nprobe=a.nprobe)
    dropped = int((~nd.keep).sum())
    planted_found = int((~nd.keep[a.n - n_dup :]).sum())
    print(f"near dedup          {time.perf_counter() - t:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB   index {nd.index} "
          f"edges {len(nd.edge_a):,} dropped {dropped:,} (planted copies {n_dup:,}, of them dropped {planted_found:,})", flush=True)

    keep = np.flatnonzero(nd.keep)
    t = time.perf_counter()
    hc = hierarchical_kmeans(x[keep], levels, resampling_steps=a.resampling_steps, iters=a.iters, seed=a.seed)
    print(f"hierarchical kmeans {time.perf_counter() - t:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB   clusters/level "
          f"{[len(c) for c in hc.centroids]}", flush=True)

    t = time.perf_counter()
    idx = balanced_sample(hc, target, seed=a.seed)
    ent = [
        f"L{lvl}: {balance_entropy(hc.point_labels[lvl], len(c)):.3f} → {balance_entropy(hc.point_labels[lvl][idx], len(c)):.3f}"
        for lvl, c in enumerate(hc.centroids)
    ]
    print(f"balanced sampling   {time.perf_counter() - t:8.1f} s   peak RSS {peak_rss_gib():.2f} GiB   sampled {len(idx):,}; "
          f"balance entropy per level (all → sampled) {', '.join(ent)}", flush=True)


if __name__ == "__main__":
    main()
