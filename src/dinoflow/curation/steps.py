"""The global curation steps, each a function of (run, rows) that drops rows with its own status.

Every step works on this rank's rows and talks to the other ranks through `run.comm`; each
records how many rows remain after it (the funnel, in the order the steps ran) and its seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinoflow.config import CurateConfig, stage_seed
from dinoflow.curation.cluster import hierarchical_kmeans
from dinoflow.curation.dedup import exact_duplicate_of, near_duplicates, relative_duplicates
from dinoflow.curation.retrieve import cluster_retrieval, nearest_seed, sample_retrieval
from dinoflow.curation.rows import CODE, Rows, hash128
from dinoflow.curation.sample import balanced_sample, entropy_of_counts
from dinoflow.distributed.comm import Comm
from dinoflow.errors import DinoflowError


@dataclass
class Run:
    """One curate run: settings, this process's place in the job, and what the report will show."""

    c: CurateConfig
    comm: Comm
    out: Path
    work: Path
    funnel: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _t: float = field(default_factory=time.perf_counter)

    def remaining(self, step: str, rows: Rows) -> None:
        """Record the rows (of every rank) still kept after `step`."""
        self.funnel.append({"step": step, "remaining": self.comm.sum_int(int(rows.alive.sum()))})

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 3)
        self._t = now


def count_ingest_drops(run: Run, rows: Rows) -> None:
    """Decoding and the junk guards ran per partition; here they enter the funnel."""
    run.funnel.append({"step": "input", "remaining": rows.total})
    for status in ("corrupt", "junk"):
        gone = run.comm.sum_int(int((rows.status == CODE[status]).sum()))
        run.funnel.append({"step": status, "remaining": run.funnel[-1]["remaining"] - gone})


def exact_dedup(run: Run, rows: Rows) -> None:
    """Rows whose decoded pixels equal an earlier row's (any rank) → `exact_dup`."""
    cand = np.flatnonzero(rows.alive)
    first = exact_duplicate_of(run.comm, hash128([rows.pixel_hash[i] for i in cand]), rows.gid[cand])
    is_dup = first != rows.gid[cand]
    rows.dup_of[cand[is_dup]] = first[is_dup]
    mask = np.zeros(len(rows.gid), bool)
    mask[cand[is_dup]] = True
    rows.drop(mask, "exact_dup")
    run.remaining("exact_dup", rows)


def near_dedup(run: Run, rows: Rows) -> np.ndarray:
    """Near-duplicate components (cosine k-NN graph at the threshold) keep their first row → `near_dup`.

    Returns each alive row's component label ([n] int64, -1 for rows not searched) for relative dedup.
    """
    c = run.c
    cand = np.flatnonzero(rows.alive)
    nd = near_duplicates(
        run.comm,
        rows.emb[cand],
        rows.gid[cand],
        k=c.knn_k,
        threshold=c.near_dup_threshold,
        nprobe=c.nprobe,
        ivf_threshold=c.ivf_threshold,
        nlist=c.ivf_nlist,
        train_per_list=c.ivf_train_per_list,
        iters=c.ivf_train_iters,
        seed=c.seed,
    )
    rows.dup_of[cand[~nd.keep]] = nd.dup_of[~nd.keep]
    mask = np.zeros(len(rows.gid), bool)
    mask[cand[~nd.keep]] = True
    rows.drop(mask, "near_dup")
    rows.sims["nn_similarity"][cand] = nd.graph.nn_sim
    labels = np.full(len(rows.gid), -1, np.int64)
    labels[cand] = nd.labels
    run.info.update(
        index=nd.index, near_dup_edges=int(len(nd.graph.a)), near_dup_components=run.comm.sum_int(int(nd.keep.sum()))
    )
    run.remaining("near_dup", rows)
    return labels


def relative_dedup(run: Run, rows: Rows, labels: np.ndarray, eval_x: np.ndarray, eval_uids: list[str]) -> None:
    """Every near-dup component that touches an eval image → `eval_contamination`."""
    cand = np.flatnonzero(labels >= 0)
    if len(eval_uids):
        rel = relative_duplicates(run.comm, rows.emb[cand], labels[cand], eval_x, run.c.eval_dup_threshold)
        rows.sims["eval_similarity"][cand] = rel.eval_sim
        detail = np.full(len(rows.gid), "in a near-duplicate component that matches an eval image", dtype=object)
        hit = rel.eval_match >= 0
        detail[cand[hit]] = [f"matches {eval_uids[m]}" for m in rel.eval_match[hit]]
        mask = np.zeros(len(rows.gid), bool)
        mask[cand[rel.contaminated]] = True
        rows.drop(mask, "eval_contamination", detail)
    run.remaining("eval_contamination", rows)


def retrieve(run: Run, rows: Rows, seed_x: np.ndarray, n_seeds: int) -> None:
    """Keep rows that look like the seeds (sample / cluster retrieval, similarity floor) → `not_retrieved`."""
    c, comm = run.c, run.comm
    emb_rows = np.flatnonzero(rows.status != CODE["corrupt"]) if n_seeds else np.zeros(0, np.int64)
    emb_rows = emb_rows[rows.status[emb_rows] != CODE["junk"]]
    if n_seeds:
        rows.sims["seed_similarity"][emb_rows] = nearest_seed(comm, rows.emb[emb_rows], seed_x)
    info: dict[str, Any] = {"mode": c.retrieval, "seeds": n_seeds}
    cand = np.flatnonzero(rows.alive)
    if c.retrieval != "none" and comm.sum_int(len(cand)):
        if not n_seeds:
            raise DinoflowError(
                f"curate.retrieval is {c.retrieval!r} but no seed image in {c.seeds!r} could be decoded"
            )
        x, gid, sim = rows.emb[cand], rows.gid[cand], rows.sims["seed_similarity"][cand]
        keep = np.zeros(len(cand), bool)
        if c.retrieval in ("sample", "both"):
            keep |= sample_retrieval(comm, x, gid, seed_x, c.retrieval_per_seed)
        if c.retrieval in ("cluster", "both"):
            cr = cluster_retrieval(
                comm,
                x,
                gid,
                seed_x,
                n_clusters=c.retrieval_clusters,
                min_seed_neighbours=c.retrieval_min_seed_neighbours,
                n_neighbours=c.retrieval_per_seed,
                cap=c.retrieval_cap_per_cluster,
                iters=c.kmeans_iters,
                seed=stage_seed(c.seed),
                seed_sim=sim,
                max_points_per_centroid=c.kmeans_max_points_per_centroid,
            )
            keep |= cr.keep
            info.update(clusters=int(len(cr.seed_counts)), clusters_kept=int(len(cr.kept_clusters)))
        if c.retrieval_min_similarity is not None:
            # Structured junk (rendered text, logos) can share a cluster with real images;
            # a floor on the similarity to the nearest seed removes what no seed resembles.
            below = sim < c.retrieval_min_similarity
            info["below_min_similarity"] = comm.sum_int(int((keep & below).sum()))
            keep &= ~below
        mask = np.zeros(len(rows.gid), bool)
        mask[cand[~keep]] = True
        rows.drop(mask, "not_retrieved")
    run.info["retrieval"] = info
    run.remaining("not_retrieved", rows)


def cluster_and_sample(run: Run, rows: Rows) -> None:
    """Hierarchical k-means with resampling over the kept rows, then balanced sampling → `not_sampled`."""
    c, comm = run.c, run.comm
    levels = list(c.kmeans_levels)
    rows.clusters = np.full((len(rows.gid), len(levels)), -1, np.int64)
    info: dict[str, Any] = {"levels": levels}
    cand = np.flatnonzero(rows.alive)
    if levels and comm.sum_int(len(cand)):
        h = hierarchical_kmeans(
            comm,
            rows.emb[cand],
            rows.gid[cand],
            levels,
            resampling_steps=c.kmeans_resampling_steps,
            sample_sizes=c.kmeans_sample_sizes,
            iters=c.kmeans_iters,
            seed=stage_seed(c.seed),
            max_points_per_centroid=c.kmeans_max_points_per_centroid,
        )
        for lvl in range(len(levels)):
            rows.clusters[cand, lvl] = h.labels[lvl]
        total = int(h.sizes[0].sum())
        if c.target_size is not None and c.target_size < total:
            picked = balanced_sample(
                comm, h, rows.gid[cand], c.target_size, seed=stage_seed(c.seed), strategy=c.sampling_strategy
            )
            mask = np.zeros(len(rows.gid), bool)
            mask[cand[~picked]] = True
            rows.drop(mask, "not_sampled")
            # Top-down sampling balances the coarsest level first: report every level.
            info["entropy_before"] = [entropy_of_counts(s, len(s)) for s in h.sizes]
            info["entropy_after"] = [
                entropy_of_counts(comm.all_reduce_sum(np.bincount(lab[picked], minlength=len(cc))), len(cc))
                for lab, cc in zip(h.labels, h.centroids)
            ]
        info["actual_levels"] = [int(len(cc)) for cc in h.centroids]
        kept0 = rows.clusters[rows.alive, 0]
        k0 = len(h.centroids[0])
        info["entropy_kept"] = entropy_of_counts(comm.all_reduce_sum(np.bincount(kept0, minlength=k0)), k0)
    run.info["clusters"] = info
    run.remaining("not_sampled", rows)
