"""Curation at scale: distributed near dedup (IVF graph + components) and hierarchical k-means.

    python benchmarks/curation_scale.py --n 1000000 --levels 2000,100,10 --iters 10
    python benchmarks/curation_scale.py --n 1000000 --levels 2000,100,10 --iters 10 --procs 2   # torchrun, gloo
    python benchmarks/curation_scale.py --n 200000 --check-objective   # + full-data Lloyd per level (slow)

The embeddings are a clustered mixture (Zipf concept sizes) with planted near-duplicates (the
last 5% of every block of rows are noisy copies of earlier rows of the block), generated block by
block from the seed, so every rank makes only its own rows and the pool is the same for any
number of processes. Prints seconds per step, planted-copy recall, the k-means objective of
every level (and, with --check-objective, its ratio to full-data Lloyd at the same k, seed and
iterations), and the peak RSS of every rank.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

BLOCK = 1 << 16
ARGS_ENV = "CURATION_SCALE_ARGS"
DUP_FRACTION = 0.05


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synthetic_block(b: int, n: int, dim: int, n_concepts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [b·BLOCK, min(n, (b+1)·BLOCK)): (unit vectors, source row of each planted copy or -1)."""
    rng = np.random.default_rng([seed, 0])
    centres = rng.standard_normal((n_concepts, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = 1.0 / np.arange(1, n_concepts + 1) ** 0.8
    rng = np.random.default_rng([seed, 1, b])
    lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
    m = hi - lo
    n_dup = int(m * DUP_FRACTION)
    comp = rng.choice(n_concepts, size=m, p=sizes / sizes.sum())
    x = centres[comp] + 0.9 * rng.standard_normal((m, dim)).astype(np.float32) / math.sqrt(dim)
    src = np.full(m, -1, np.int64)
    if n_dup:
        src[m - n_dup :] = rng.choice(m - n_dup, size=n_dup, replace=False)
        x[m - n_dup :] = x[src[m - n_dup :]] + 0.05 * rng.standard_normal((n_dup, dim)).astype(np.float32) / math.sqrt(
            dim
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.where(src >= 0, src + lo, -1)


def my_rows(comm, n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's blocks of the synthetic pool: (x [m, D], gid [m], planted source gid or -1 [m])."""
    n_blocks = (n + BLOCK - 1) // BLOCK
    blocks = range(n_blocks * comm.rank // comm.world, n_blocks * (comm.rank + 1) // comm.world)
    parts = [synthetic_block(b, n, dim, max(10, n // 1000), seed) for b in blocks]
    x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    src = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    start = blocks.start * BLOCK
    return np.ascontiguousarray(x), np.arange(start, start + len(x), dtype=np.int64), src


def gemm_gflops() -> float:
    """fp32 GEMM throughput of this process right now (the machine is shared: compare within one run)."""
    import torch

    a, b = torch.randn(4096, 256), torch.randn(2048, 256)
    a @ b.T
    t = time.perf_counter()
    for _ in range(5):
        a @ b.T
    return 5 * 2 * 4096 * 2048 * 256 / (time.perf_counter() - t) / 1e9


def check_levels(comm, xk, gk, h, a) -> list[tuple[float, float]]:
    """Per level, (our objective, full-data Lloyd's objective) on the same inputs, same k, seed, iterations
    and resampling: level 0 on the rows, level l on our level l-1 centroids."""
    from dinoflow.curation.cluster import level_kmeans
    from dinoflow.curation.kmeans import KMeans, objective, sq_distances
    from dinoflow.distributed.comm import Comm

    out = []
    for lvl in range(h.n_levels):
        cm, pts, ids = (
            (comm, xk, gk) if lvl == 0 else (Comm(), h.centroids[lvl - 1], np.arange(len(h.centroids[lvl - 1])))
        )
        ours_labels = h.labels[0] if lvl == 0 else h.parents[lvl - 1]
        ours = objective(
            cm, KMeans(h.centroids[lvl], ours_labels, sq_distances(pts, h.centroids[lvl], ours_labels), h.sizes[lvl])
        )
        full = level_kmeans(
            cm,
            pts,
            ids,
            len(h.centroids[lvl]),
            resampling_steps=a.resampling_steps,
            sample_size=None,
            iters=a.iters,
            seed=a.seed + 1000 * lvl,
            max_points_per_centroid=None,
        )
        out.append((ours, objective(cm, full)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=64, help="neighbours kept per image in near dedup")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--nprobe", type=int, default=2)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: about sqrt(nprobe·n))")
    p.add_argument(
        "--ivf-train-iters", type=int, default=0, help="Lloyd iterations for the IVF lists (0: sampled rows)"
    )
    p.add_argument("--train-per-list", type=int, default=16, help="with --ivf-train-iters: rows per list it trains on")
    p.add_argument("--levels", type=str, default="2000,100,10", help="comma-separated clusters per level, finest first")
    p.add_argument("--resampling-steps", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument(
        "--points-per-centroid", type=int, default=64, help="Lloyd iterations run on this many rows per centroid"
    )
    p.add_argument("--target", type=int, default=0, help="balanced sample size (default n/4)")
    p.add_argument("--check-objective", action="store_true", help="also run full-data Lloyd per level and compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--procs", type=int, default=1, help="processes (torchrun --standalone, gloo on CPU / NCCL on GPUs)")
    raw = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(ARGS_ENV):  # a worker torchrun started: torchrun's own parser would misread "--n"
        raw = json.loads(os.environ[ARGS_ENV])
    a = p.parse_args(raw)
    if a.procs > 1 and "RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.procs}", __file__]
        raise SystemExit(subprocess.run(cmd, env={**os.environ, ARGS_ENV: json.dumps(raw)}).returncode)

    import torch

    from dinoflow.curation.cluster import hierarchical_kmeans
    from dinoflow.curation.dedup import near_duplicates
    from dinoflow.curation.sample import balanced_sample
    from dinoflow.distributed.comm import init_comm

    comm = init_comm()
    say = print if comm.is_main else (lambda *_, **__: None)
    levels = [int(v) for v in a.levels.split(",")]
    target = a.target or a.n // 4
    say(
        f"n={a.n:,} dim={a.dim} k={a.k} threshold={a.threshold} nprobe={a.nprobe} levels={levels} "
        f"resampling={a.resampling_steps} iters={a.iters} points/centroid={a.points_per_centroid} target={target:,} "
        f"processes={comm.world} torch threads/process={torch.get_num_threads()} device={comm.device}"
    )
    say(f"GEMM now: {gemm_gflops():.0f} GFLOP/s per process", flush=True)
    t = time.perf_counter()
    x, gid, src = my_rows(comm, a.n, a.dim, a.seed)
    comm.barrier()
    say(f"synthetic data      {time.perf_counter() - t:8.1f} s", flush=True)

    t, c0 = time.perf_counter(), time.process_time()
    nd = near_duplicates(
        comm,
        x,
        gid,
        k=a.k,
        threshold=a.threshold,
        nprobe=a.nprobe,
        ivf_threshold=1,
        nlist=a.nlist or None,
        train_per_list=a.train_per_list,
        iters=a.ivf_train_iters,
        seed=a.seed,
    )
    t_dedup, c_dedup = time.perf_counter() - t, comm.all_reduce_sum(np.array([time.process_time() - c0]))[0]
    labels = np.empty(a.n, np.int64)  # every row's component, to score the planted copies (not timed)
    labels[comm.all_gather_cat(gid)] = comm.all_gather_cat(nd.labels)
    pairs = comm.all_gather_cat(np.stack([gid[src >= 0], src[src >= 0]], 1).reshape(-1, 2))
    found = int((labels[pairs[:, 0]] == labels[pairs[:, 1]]).sum())
    say(
        f"near dedup          {t_dedup:8.1f} s   index {nd.index}  edges {len(nd.graph.a):,}  "
        f"dropped {comm.sum_int(int((~nd.keep).sum())):,}  planted copies {len(pairs):,}, found {found:,} "
        f"(recall {found / max(1, len(pairs)):.4f})",
        flush=True,
    )
    del labels

    keep = np.flatnonzero(nd.keep)
    xk, gk = np.ascontiguousarray(x[keep]), gid[keep]
    t, c0 = time.perf_counter(), time.process_time()
    h = hierarchical_kmeans(
        comm,
        xk,
        gk,
        levels,
        resampling_steps=a.resampling_steps,
        iters=a.iters,
        seed=a.seed,
        max_points_per_centroid=a.points_per_centroid,
    )
    t_km, c_km = time.perf_counter() - t, comm.all_reduce_sum(np.array([time.process_time() - c0]))[0]
    say(f"hierarchical kmeans {t_km:8.1f} s   clusters/level {[len(c) for c in h.centroids]}", flush=True)
    cores = os.cpu_count() or 1
    say(
        f"near dedup + hierarchical k-means: {t_dedup + t_km:.1f} s wall; CPU time {c_dedup:.1f} + {c_km:.1f} = "
        f"{c_dedup + c_km:.1f} s over all processes (the machine is shared: on its {cores} idle cores that is "
        f"about {(c_dedup + c_km) / cores:.1f} s of wall time)",
        flush=True,
    )

    t = time.perf_counter()
    picked = balanced_sample(comm, h, gk, target, seed=a.seed)
    say(
        f"balanced sampling   {time.perf_counter() - t:8.1f} s   sampled {comm.sum_int(int(picked.sum())):,}",
        flush=True,
    )
    say(f"GEMM now: {gemm_gflops():.0f} GFLOP/s per process", flush=True)
    rss = comm.all_gather_cat(np.array([peak_rss_gib()]))
    say(f"peak RSS per process {[f'{v:.2f}' for v in rss]} GiB (sum {rss.sum():.2f} GiB)", flush=True)

    if a.check_objective:
        t = time.perf_counter()
        pairs = check_levels(comm, xk, gk, h, a)
        say(
            f"full-data Lloyd     {time.perf_counter() - t:8.1f} s   objective per level (ours / full-data Lloyd): "
            + ", ".join(f"L{lvl}: {o:.1f} / {r:.1f} = {o / r:.4f}" for lvl, (o, r) in enumerate(pairs)),
            flush=True,
        )


if __name__ == "__main__":
    main()
