"""The `curate` stage: an uncurated pool → deduplicated, balanced WebDataset shards + manifest + report.

Steps (every input uid ends in the manifest exactly once, with `kept` or the first reason it was dropped):
1. ingest: decode every item safely → `corrupt` (detail: the decoder's reason); junk guards →
   `junk` (detail: too_small / near_constant / noise, see curation.junk); pixel hash → `exact_dup`.
2. embed the survivors (pixel baseline or a backbone file), cached per chunk in `out_dir/.cache/`.
3. near dedup: cosine k-NN graph at `near_dup_threshold`, union-find, keep the first item of each
   component (source order) → `near_dup`.
4. relative dedup: drop every component touching an `eval_sets` image at `eval_dup_threshold`
   → `eval_contamination`.
5. retrieval from `seeds` (sample / cluster / both) → `not_retrieved`.
6. hierarchical k-means with resampling + top-down balanced sampling to `target_size` → `not_sampled`.
7. write kept images (resized to `max_side`, PNG) to shards, `manifest.parquet`, and the report.

The sources are read twice (ingest, then shard writing) so memory holds embeddings, not images.
A rerun reuses cached embedding chunks and keeps already-written shards whose planned content
is unchanged. Same config and inputs → byte-identical manifest and shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from dinoflow.config import Config, CurateConfig
from dinoflow.curation.cluster import hierarchical_kmeans
from dinoflow.curation.dedup import exact_duplicates, near_duplicates, relative_duplicates
from dinoflow.curation.embed import EmbeddingCache, make_embedder
from dinoflow.curation.junk import junk_reason
from dinoflow.curation.retrieve import cluster_retrieval, nearest_seed, sample_retrieval
from dinoflow.curation.sample import balance_entropy, balanced_sample
from dinoflow.errors import DinoflowError

STATUSES = ("kept", "corrupt", "junk", "exact_dup", "near_dup", "eval_contamination", "not_retrieved", "not_sampled")
SHARD_FORMAT = 1


@dataclass
class Row:
    uid: str
    source: str
    path: str
    pixel_hash: str = ""
    status: str = "kept"
    detail: str = ""
    duplicate_of: str = ""
    emb: int = -1  # row in the embedding matrix, -1 when not embedded


@dataclass
class Ingested:
    rows: list[Row]
    emb: np.ndarray  # [E, D] embeddings of the rows with emb >= 0
    emb_rows: list[int]  # manifest row of each embedding
    cache: EmbeddingCache
    input_items: int
    skipped_files: list[str] = field(default_factory=list)


def _sources(c: CurateConfig) -> list[str]:
    if not c.sources:
        raise DinoflowError("curate.sources is empty: list at least one image folder, shard folder or s3:// prefix")
    return list(c.sources)


def _iter_items(sources: list[str], stats: Any = None) -> Iterator[tuple[str, Any]]:
    from dinoflow.data.sources import iter_source

    for src in sources:
        for item in iter_source(src, stats):
            yield src, item


def _uid(src: str, path: str, n_sources: int) -> str:
    # A single source keeps its relative uids; several sources are told apart by their position.
    return path if n_sources == 1 else f"{src.rstrip('/')}/{path}"


def _decode(data: bytes, error: str | None, max_pixels: int) -> tuple[Image.Image | None, str]:
    from dinoflow.data.decode import CorruptImage, decode_image

    if error:
        return None, f"unreadable: {error}"
    try:
        return decode_image(data, max_pixels=max_pixels), ""
    except CorruptImage as e:
        return None, f"{e.reason}: {e.detail}" if e.detail else e.reason


def ingest(cfg: CurateConfig, embedder: Any, cache: EmbeddingCache, on_chunk: Callable[[int], None] | None = None) -> Ingested:
    """Pass 1 over the sources: decode, guard, hash, exact-dedup, embed (chunked, cached)."""
    from dinoflow.data.decode import pixel_hash
    from dinoflow.data.sources import SourceStats

    sources = _sources(cfg)
    stats = SourceStats()
    rows: list[Row] = []
    seen_uids: set[str] = set()
    first_by_hash: dict[str, int] = {}
    chunk_imgs: list[Image.Image] = []
    chunk_rows: list[int] = []
    parts: list[np.ndarray] = []
    emb_rows: list[int] = []
    n_chunks = 0

    def flush() -> None:
        nonlocal n_chunks
        if not chunk_rows:
            return
        x = cache.get_or_compute([rows[i].pixel_hash for i in chunk_rows], chunk_imgs, embedder)
        for i in chunk_rows:
            rows[i].emb = len(emb_rows)
            emb_rows.append(i)
        parts.append(np.asarray(x, np.float32))
        chunk_imgs.clear()
        chunk_rows.clear()
        n_chunks += 1
        if on_chunk is not None:
            on_chunk(n_chunks)

    for src, item in tqdm(_iter_items(sources, stats), desc="curate: ingest", unit="img", mininterval=1.0):
        uid = _uid(src, item.uid, len(sources))
        if uid in seen_uids:
            raise DinoflowError(f"uid {uid!r} appears twice in curate.sources: is a source listed twice?")
        seen_uids.add(uid)
        row = Row(uid=uid, source=src, path=item.uid)
        rows.append(row)
        img, why = _decode(item.data, item.error, cfg.max_pixels)
        if img is None:
            row.status, row.detail = "corrupt", why
            continue
        row.pixel_hash = pixel_hash(img)
        junk = junk_reason(img, min_side=cfg.min_side, min_std=cfg.min_std, min_autocorr=cfg.min_autocorr)
        if junk:
            row.status, row.detail = "junk", junk
            continue
        first = first_by_hash.setdefault(row.pixel_hash, len(rows) - 1)
        if first != len(rows) - 1:
            row.status, row.duplicate_of = "exact_dup", rows[first].uid
            continue
        chunk_imgs.append(img)
        chunk_rows.append(len(rows) - 1)
        if len(chunk_rows) >= cfg.chunk_size:
            flush()
    flush()
    emb = np.concatenate(parts) if parts else np.zeros((0, getattr(embedder, "dim", 1)), np.float32)
    return Ingested(rows, emb, emb_rows, cache, input_items=len(rows), skipped_files=list(stats.skipped_files))


def embed_reference(source: str | None, embedder: Any, cache: EmbeddingCache, cfg: CurateConfig) -> tuple[np.ndarray, list[str]]:
    """Embed every decodable image of a seed / eval source: ([M, D], uids). Undecodable items are skipped."""
    from dinoflow.data.decode import pixel_hash
    from dinoflow.data.sources import iter_source

    if not source:
        return np.zeros((0, 1), np.float32), []
    if not source.startswith("s3://") and not Path(source).exists():
        raise DinoflowError(f"curate reference set {source} does not exist: build it (dinoflow demo-data) or fix the path")
    imgs: list[Image.Image] = []
    hashes: list[str] = []
    uids: list[str] = []
    parts: list[np.ndarray] = []
    for item in iter_source(source):
        img, _ = _decode(item.data, item.error, cfg.max_pixels)
        if img is None:
            continue
        imgs.append(img)
        hashes.append(pixel_hash(img))
        uids.append(item.uid)
        if len(imgs) - sum(len(p) for p in parts) >= cfg.chunk_size:
            start = sum(len(p) for p in parts)
            parts.append(cache.get_or_compute(hashes[start:], imgs[start:], embedder))
    start = sum(len(p) for p in parts)
    if start < len(imgs):
        parts.append(cache.get_or_compute(hashes[start:], imgs[start:], embedder))
    if not parts:
        return np.zeros((0, 1), np.float32), []
    return np.concatenate(parts).astype(np.float32), uids


# ---------------------------------------------------------------- shards


def _shard_plan_digest(samples: list[tuple[str, dict]], max_side: int) -> str:
    h = hashlib.sha256(f"v{SHARD_FORMAT}:{max_side}".encode())
    for key, meta in samples:
        h.update(key.encode())
        h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _png(img: Image.Image, max_side: int) -> bytes:
    from dinoflow.data.decode import resize_max_side

    buf = io.BytesIO()
    resize_max_side(img, max_side).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def write_shards(
    cfg: CurateConfig, rows: list[Row], metas: dict[int, dict], wanted_thumbs: set[str]
) -> tuple[list[str], int, dict[str, Image.Image]]:
    """Pass 2: write kept rows (manifest order) to shards, reusing finished shards of an earlier run.

    Returns (shard file names, shards reused, thumbnails of the `wanted_thumbs` uids).
    """
    from dinoflow.data.shards import ShardWriter, shard_name
    from dinoflow.io import atomic_write_json

    out = Path(cfg.out_dir)
    kept = [i for i, r in enumerate(rows) if r.status == "kept"]
    plan: list[list[int]] = [kept[s : s + cfg.shard_size] for s in range(0, len(kept), cfg.shard_size)]
    names = [shard_name("shards", i) for i in range(len(plan))]
    digests = [_shard_plan_digest([(f"{i:09d}", metas[i]) for i in part], cfg.max_side) for part in plan]
    state_path = out / ".cache" / "shards.json"
    try:
        done_state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        done_state = {}
    reuse = 0
    while reuse < len(plan) and done_state.get(names[reuse]) == digests[reuse] and (out / names[reuse]).is_file():
        reuse += 1
    state = {names[i]: digests[i] for i in range(reuse)}
    to_write = {i for part in plan[reuse:] for i in part}
    uid_to_row = {rows[i].uid: i for i in range(len(rows))}
    need = to_write | {uid_to_row[u] for u in wanted_thumbs if u in uid_to_row}
    thumbs: dict[str, Image.Image] = {}
    sources = _sources(cfg)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(to_write), desc="curate: shards", unit="img", mininterval=1.0)
    with ShardWriter(out, cfg.shard_size, "shards", start_index=reuse) as w:
        # Sources are re-read in manifest order, so kept rows arrive in plan order.
        for i, (_src, item) in enumerate(_iter_items(sources)):
            if i not in need:
                continue
            img, _ = _decode(item.data, item.error, cfg.max_pixels)
            if img is None:
                continue
            if rows[i].uid in wanted_thumbs:
                thumbs[rows[i].uid] = img.copy()
            if i in to_write:
                w.write(f"{i:09d}", _png(img, cfg.max_side), "png", metas[i])
                bar.update(1)
                done = reuse + len(w.paths)
                if done and names[done - 1] not in state:
                    state[names[done - 1]] = digests[done - 1]
                    atomic_write_json(state_path, state)
    bar.close()
    atomic_write_json(state_path, {names[i]: digests[i] for i in range(len(plan))})
    return names, reuse, thumbs


# ---------------------------------------------------------------- manifest


def write_manifest(path: Path, rows: list[Row], cluster_ids: np.ndarray, sims: dict[str, np.ndarray]) -> None:
    """manifest.parquet: one row per input uid (deterministic bytes: no pandas metadata, no timestamps)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dinoflow.io import atomic_path

    cols: dict[str, Any] = {
        "uid": [r.uid for r in rows],
        "source": [r.source for r in rows],
        "path": [r.path for r in rows],
        "pixel_hash": [r.pixel_hash for r in rows],
        "status": [r.status for r in rows],
        "detail": [r.detail for r in rows],
        "duplicate_of": [r.duplicate_of for r in rows],
    }
    for lvl in range(cluster_ids.shape[1]):
        cols[f"cluster_l{lvl}"] = pa.array(cluster_ids[:, lvl], pa.int32())
    for name, v in sims.items():
        cols[name] = pa.array(v.astype(np.float32), pa.float32())
    table = pa.table(cols)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


# ---------------------------------------------------------------- the stage


def curate(cfg: Config, *, on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Stage `curate` (see the module docstring). `on_chunk(n)` is called after each embedded pool chunk."""
    from dinoflow.curation import report as rep
    from dinoflow.tracking import log_artifact, log_metrics, stage_run

    c = cfg.curate
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    out_dir = Path(c.out_dir)
    with stage_run("curate", cfg):
        embedder = make_embedder(
            c.embedder, size=c.embed_size, blur=c.embed_blur, align=c.embed_align, batch_size=c.batch_size, arch=c.embedder_arch
        )
        cache = EmbeddingCache(out_dir / ".cache", embedder.identity())
        t = time.perf_counter()
        ing = ingest(c, embedder, cache, on_chunk)
        t = lap("ingest_embed", t)
        rows, x = ing.rows, ing.emb
        n_emb = len(x)
        funnel = [{"step": "input", "remaining": len(rows)}]

        def count_step(step: str) -> None:
            funnel.append({"step": step, "remaining": sum(r.status == "kept" for r in rows)})

        for st in ("corrupt", "junk", "exact_dup"):
            funnel.append({"step": st, "remaining": len(rows) - sum(r.status in STATUSES[1 : STATUSES.index(st) + 1] for r in rows)})

        # near dedup (first item in source order wins)
        nd = near_duplicates(x, c.knn_k, c.near_dup_threshold, seed=c.seed, nprobe=c.nprobe,
                             index_kind="flat" if n_emb < c.ivf_threshold else "ivf")
        for e in np.flatnonzero(~nd.keep):
            r = rows[ing.emb_rows[e]]
            r.status, r.duplicate_of = "near_dup", rows[ing.emb_rows[int(nd.dup_of[e])]].uid
        count_step("near_dup")
        t = lap("near_dedup", t)

        # relative dedup against the evaluation sets
        eval_parts = [embed_reference(s, embedder, cache, c) for s in c.eval_sets]
        eval_x = np.concatenate([p[0] for p in eval_parts if len(p[1])]) if any(len(p[1]) for p in eval_parts) else np.zeros((0, x.shape[1] if n_emb else 1), np.float32)
        eval_uids = [u for p in eval_parts for u in p[1]]
        rel = relative_duplicates(x, eval_x, c.eval_dup_threshold, labels=nd.labels, seed=c.seed)
        for e in np.flatnonzero(rel.contaminated):
            r = rows[ing.emb_rows[e]]
            if r.status == "kept":
                m = int(rel.eval_match[e])
                r.status = "eval_contamination"
                r.detail = f"matches {eval_uids[m]}" if m >= 0 else "in a near-duplicate component that matches an eval image"
        count_step("eval_contamination")
        t = lap("relative_dedup", t)

        # retrieval from seeds
        seed_x, seed_uids = embed_reference(c.seeds, embedder, cache, c) if c.seeds else (np.zeros((0, 1), np.float32), [])
        seed_sim, _ = nearest_seed(x, seed_x) if len(seed_uids) else (np.full(n_emb, np.nan, np.float32), None)
        alive = np.array([rows[ing.emb_rows[e]].status == "kept" for e in range(n_emb)], bool)
        cand = np.flatnonzero(alive)
        retrieval_info: dict[str, Any] = {"mode": c.retrieval, "seeds": len(seed_uids)}
        if c.retrieval != "none" and len(cand):
            if not len(seed_uids):
                raise DinoflowError(f"curate.retrieval is {c.retrieval!r} but no seed images were found in {c.seeds!r}")
            keep = np.zeros(len(cand), bool)
            if c.retrieval in ("sample", "both"):
                keep |= sample_retrieval(x[cand], seed_x, c.retrieval_per_seed)
            if c.retrieval in ("cluster", "both"):
                cr = cluster_retrieval(
                    x[cand], seed_x, n_clusters=c.retrieval_clusters, min_seed_neighbours=c.retrieval_min_seed_neighbours,
                    n_neighbours=c.retrieval_per_seed, cap=c.retrieval_cap_per_cluster, iters=c.kmeans_iters, seed=c.seed,
                    seed_sim=seed_sim[cand],
                )
                keep |= cr.keep
                retrieval_info.update(clusters=int(len(cr.seed_counts)), clusters_kept=int(len(cr.kept_clusters)))
            if c.retrieval_min_similarity is not None:
                # Structured junk (rendered text, logos) can share a cluster with real images;
                # a floor on the similarity to the nearest seed removes what no seed resembles.
                below = seed_sim[cand] < c.retrieval_min_similarity
                retrieval_info["below_min_similarity"] = int((keep & below).sum())
                keep &= ~below
            for e in cand[~keep]:
                rows[ing.emb_rows[e]].status = "not_retrieved"
            cand = cand[keep]
        count_step("not_retrieved")
        t = lap("retrieval", t)

        # hierarchical k-means + balanced sampling
        n_levels = len(c.kmeans_levels)
        emb_clusters = np.full((n_emb, n_levels), -1, np.int64)
        cluster_info: dict[str, Any] = {"levels": list(c.kmeans_levels)}
        if len(cand) and n_levels:
            hc = hierarchical_kmeans(
                x[cand], list(c.kmeans_levels), resampling_steps=c.kmeans_resampling_steps,
                sample_sizes=c.kmeans_sample_sizes, iters=c.kmeans_iters, seed=c.seed,
            )
            for lvl in range(n_levels):
                emb_clusters[cand, lvl] = hc.point_labels[lvl]
            if c.target_size is not None and c.target_size < len(cand):
                picked = balanced_sample(hc, c.target_size, seed=c.seed, strategy=c.sampling_strategy)
                chosen = np.zeros(len(cand), bool)
                chosen[picked] = True
                for e in cand[~chosen]:
                    rows[ing.emb_rows[e]].status = "not_sampled"
                # Top-down sampling balances the coarsest level first: report every level.
                cluster_info["entropy_before"] = [balance_entropy(lab, len(cc)) for lab, cc in zip(hc.point_labels, hc.centroids)]
                cluster_info["entropy_after"] = [
                    balance_entropy(lab[picked], len(cc)) for lab, cc in zip(hc.point_labels, hc.centroids)
                ]
            cluster_info["actual_levels"] = [int(len(cc)) for cc in hc.centroids]
        count_step("not_sampled")
        t = lap("cluster_sample", t)

        cluster_ids = np.full((len(rows), n_levels), -1, np.int64)
        sims = {
            "seed_similarity": np.full(len(rows), np.nan, np.float32),
            "nn_similarity": np.full(len(rows), np.nan, np.float32),
            "eval_similarity": np.full(len(rows), np.nan, np.float32),
        }
        er = np.asarray(ing.emb_rows, np.int64)
        if n_emb:
            cluster_ids[er] = emb_clusters
            sims["seed_similarity"][er] = seed_sim
            sims["nn_similarity"][er] = nd.nn_sim
            sims["eval_similarity"][er] = rel.eval_sim if len(eval_uids) else np.nan
        kept_rows = [i for i, r in enumerate(rows) if r.status == "kept"]
        if n_levels and kept_rows:
            kept_l0 = cluster_ids[kept_rows, 0]
            cluster_info["entropy_kept"] = balance_entropy(kept_l0[kept_l0 >= 0], max(1, int(cluster_ids[:, 0].max()) + 1))
        metas = {
            i: {"uid": rows[i].uid, "source": rows[i].source, "clusters": [int(v) for v in cluster_ids[i]]} for i in kept_rows
        }

        wanted = rep.wanted_thumbnails(rows, cluster_ids, c.report_images)
        shard_names, reused, thumbs = write_shards(c, rows, metas, wanted)
        t = lap("write_shards", t)
        write_manifest(out_dir / "manifest.parquet", rows, cluster_ids, sims)

        summary = rep.write_report(
            c, rows=rows, funnel=funnel, cluster_ids=cluster_ids, sims=sims, near=nd, emb_rows=ing.emb_rows,
            cluster_info=cluster_info, retrieval_info=retrieval_info, thumbs=thumbs,
            extra={
                "input_items": ing.input_items,
                "skipped_files": ing.skipped_files,
                "embedder": embedder.identity(),
                "embedding_cache": cache.stats(),
                "index": nd.index,
                "shards": shard_names,
                "shards_reused": reused,
                "eval_images": len(eval_uids),
                "seed_images": len(seed_uids),
                "seconds": timings,
            },
        )
        t = lap("report", t)
        log_metrics({f"curate_{k}": float(v) for k, v in summary["counts"].items()})
        for k, v in summary.get("ground_truth", {}).items():
            if isinstance(v, (int, float)):
                log_metrics({f"curate_gt_{k}": float(v)})
        for p in (Path(c.report_dir) / "curation.json", Path(c.report_dir) / "curation.html", out_dir / "manifest.parquet"):
            log_artifact(p)
    summary["seconds_total"] = round(time.perf_counter() - t0, 2)
    return summary
