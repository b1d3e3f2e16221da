"""The `curate` stage: an uncurated pool → deduplicated, balanced WebDataset shards + manifest + report.

One implementation for one process, `torchrun --nproc-per-node=N -m dinoflow curate` (gloo on CPU,
NCCL on GPUs) and a Kubeflow fan-out (`pipelines/curation_fanout.py`). The steps, in order:

1. check_inputs: every input path exists and the embedder loads, before any work.
2. plan: rank 0 lists the pool, the seeds and the eval sets and splits them into partitions
   (`chunk_size` images or one .tar each); every rank gets the same plan.
3. decode_and_embed: each rank decodes and embeds its partitions (streaming, one embedding shard
   per partition with its uids; finished partitions of a killed run are reused) → `corrupt`, `junk`.
4. exact_dedup (pixel hash, across ranks) → `exact_dup`; near_dedup (IVF graph, components)
   → `near_dup`; relative_dedup against the eval sets → `eval_contamination`.
5. retrieve from the seeds → `not_retrieved`; cluster_and_sample (hierarchical k-means with
   resampling, balanced sampling to `target_size`) → `not_sampled`.
6. write_outputs: manifest parts, the kept images as shards (read again by uid and content hash),
   manifest.parquet and, last, the completeness record manifest.json.
7. report (rank 0).

Every input uid ends in the manifest exactly once, with `kept` or the first reason it was dropped.
Same config and inputs → the same manifest and byte-identical shards, for any number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np

from dinoflow.config import Config, CurateConfig
from dinoflow.curation import embed
from dinoflow.curation.ingest import decode_settings, ingest_partitions
from dinoflow.curation.manifest import merge_parts, start_writing, write_manifest, write_parts
from dinoflow.curation.partitions import Plan, embed_owners, plan_partitions
from dinoflow.curation.report import MAX_PICTURES, draw_pictures, pictures, write_report
from dinoflow.curation.report_data import summarize
from dinoflow.curation.rows import Rows, load_reference, load_rows
from dinoflow.curation.skipped import TABLE, write_skipped
from dinoflow.curation.steps import (
    Run,
    cluster_and_sample,
    count_ingest_drops,
    exact_dedup,
    near_dedup,
    relative_dedup,
    retrieve,
)
from dinoflow.curation.writer import write_shards
from dinoflow.distributed.comm import init_comm
from dinoflow.errors import DinoflowError, StorageError, output_dir_problem
from dinoflow.interrupts import raise_on_sigterm
from dinoflow.tracking import log_artifact, log_metrics, stage_run


def work_dir(c: CurateConfig) -> Path:
    return Path(c.work_dir) if c.work_dir else Path(c.out_dir) / ".curate"


def check_inputs(c: CurateConfig) -> None:
    """Every local input path exists (named by its key), before any image is read."""
    if not c.sources:
        raise DinoflowError("curate.sources is empty: list at least one image folder, shard folder or s3:// prefix")
    named = [(f"curate.sources[{i}]", s) for i, s in enumerate(c.sources)]
    named += [("curate.seeds", c.seeds)] if c.seeds else []
    named += [(f"curate.eval_sets[{i}]", s) for i, s in enumerate(c.eval_sets)]
    for key, path in named:
        if not path.startswith("s3://") and not Path(path).exists():
            raise DinoflowError(f"{key} = {path!r} does not exist: build it (dinoflow demo-data) or fix the path")
    if c.retrieval != "none" and not c.seeds:
        raise DinoflowError(
            f"curate.retrieval is {c.retrieval!r} but curate.seeds is empty: give seed images or set retrieval: none"
        )


def check_outputs(c: CurateConfig) -> None:
    """Every output folder can be created and written, before any work (named by its key). Only the
    stage that writes them checks: the fan-out's plan and embedding tasks write elsewhere."""
    outputs = [("curate.out_dir", c.out_dir), ("curate.report_dir", c.report_dir)]
    outputs += [("curate.work_dir", c.work_dir)] if c.work_dir else []
    for key, path in outputs:
        if "://" in path:
            continue
        why = output_dir_problem(path)
        if why:
            raise StorageError(f"{key} = {path!r} cannot be written: {why}; point it at a folder on a writable disk")


def make_plans(c: CurateConfig, settings: str) -> dict[str, Plan]:
    """The partitions of the pool ("pool"), the seeds ("seeds") and each eval set ("eval<i>")."""
    plans = {"pool": plan_partitions("pool", list(c.sources), c.chunk_size, settings)}
    if c.seeds:
        plans["seeds"] = plan_partitions("seeds", [c.seeds], c.chunk_size, settings)
    for i, s in enumerate(c.eval_sets):
        plans[f"eval{i}"] = plan_partitions(f"eval{i}", [s], c.chunk_size, settings)
    return plans


def make_embedder(c: CurateConfig) -> Any:
    return embed.make_embedder(
        c.embedder,
        size=c.embed_size,
        blur=c.embed_blur,
        align=c.embed_align,
        batch_size=c.batch_size,
        arch=c.embedder_arch,
    )


def plan(run: Run, settings: str) -> dict[str, Plan]:
    """Rank 0 lists every input; all ranks get its plans (one listing, so every rank agrees)."""
    c, comm = run.c, run.comm
    text = b""
    if comm.is_main:
        text = "\n".join(p.to_json() for p in make_plans(c, settings).values()).encode()
    data = comm.all_gather(np.frombuffer(text, np.uint8))[0].tobytes()
    plans = {p.namespace: p for p in map(Plan.from_json, data.decode().split("\n"))}
    run.info["partitions"] = len(plans["pool"].partitions)
    run.lap("plan")
    return plans


def decode_and_embed(
    run: Run, plans: dict[str, Plan], embedder: Any, on_partition: Callable[[int], None] | None
) -> None:
    """Each rank decodes + embeds its share of every plan's partitions (reference sets first)."""
    comm = run.comm
    parts = [p for plan_ in plans.values() for p in plan_.partitions]
    mine = [p for p, owner in zip(parts, embed_owners(parts, comm.world)) if owner == comm.rank]
    mine.sort(key=lambda p: p.namespace == "pool")
    got = ingest_partitions(
        mine, run.c, embedder, run.work, workers=run.c.workers, show=comm.is_main, on_partition=on_partition
    )
    run.info["embedding_shards"] = {k: comm.sum_int(v) for k, v in got.items()}
    comm.barrier()
    run.lap("decode_embed")


def write_outputs(run: Run, rows: Rows, pool: Plan) -> dict[str, Any]:
    """Manifest parts → shards (rank j % world writes shard j) → manifest.parquet → manifest.json (last)."""
    comm, levels = run.comm, rows.cluster_table().shape[1]
    write_parts(comm, rows, pool.partitions, run.work, levels)
    if comm.is_main:
        start_writing(run.out)
    counts = comm.all_gather_cat(rows.part_rows)
    kept = comm.all_gather_cat(
        np.array(
            [int(rows.alive[s - n : s].sum()) for s, n in zip(np.cumsum(rows.part_rows), rows.part_rows)], np.int64
        )
    )
    first_gid = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    comm.barrier()
    shards, reused = write_shards(comm, run.c, pool.partitions, first_gid, kept, run.work, levels, show=comm.is_main)
    run.info.update(shards=[s["name"] for s in shards], shards_reused=reused)
    if comm.is_main:
        skipped = write_skipped(run.out, pool.skipped, run.work, pool.partitions)
        run.info["skipped"] = skipped
        remaining = {f["step"]: f["remaining"] for f in run.funnel}
        write_manifest(run.out, run.work, len(pool.partitions), shards, remaining, skipped["name"])
    comm.barrier()
    run.lap("write_outputs")
    return {"shards": shards, "reused": reused}


class Stopped(DinoflowError):
    """The stage was told to stop (SIGTERM / SIGINT)."""


def _stopped(signame: str) -> Stopped:
    return Stopped(f"stopped by {signame}; nothing after the last finished partition or shard was kept")


def curate(cfg: Config, *, on_partition: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Stage `curate` (see the module docstring). `on_partition(n)` is called after each embedded partition."""
    c = cfg.curate
    check_inputs(c)
    check_outputs(c)
    with raise_on_sigterm(_stopped), stage_run("curate", cfg):
        comm = init_comm()
        embedder = make_embedder(c)
        run = Run(c, comm, Path(c.out_dir), work_dir(c))
        plans = plan(run, decode_settings(c, embedder.identity()))
        decode_and_embed(run, plans, embedder, on_partition)
        summary = global_steps(run, plans, embedder.dim)
        if comm.is_main:
            log_metrics({f"curate_{k}": float(v) for k, v in {"kept": summary["kept"], **summary["dropped"]}.items()})
            for p in (
                Path(c.report_dir) / "curation.json",
                Path(c.report_dir) / "curation.html",
                run.out / "manifest.parquet",
            ):
                log_artifact(p)
    return summary


def global_steps(run: Run, plans: dict[str, Plan], dim: int) -> dict[str, Any]:
    """Steps 4–7 on the embedded partitions; returns the report summary (on every rank)."""
    rows = load_rows(run.comm, plans["pool"], run.work, dim)
    count_ingest_drops(run, rows)
    run.lap("load")
    if not run.comm.sum_int(int(rows.alive.sum())):
        nothing_usable(run, rows, plans["pool"])
    exact_dedup(run, rows)
    labels = near_dedup(run, rows)
    run.lap("dedup")
    refs = [load_reference(p, run.work) for ns, p in plans.items() if ns.startswith("eval")]
    eval_x = np.concatenate([r[0] for r in refs if r[1]]) if any(r[1] for r in refs) else np.zeros((0, dim), np.float32)
    relative_dedup(run, rows, labels, eval_x, [u for r in refs for u in r[1]])
    seed_x, seed_uids = (
        load_reference(plans["seeds"], run.work) if "seeds" in plans else (np.zeros((0, dim), np.float32), [])
    )
    retrieve(run, rows, seed_x, len(seed_uids))
    run.lap("relative_dedup_retrieval")
    cluster_and_sample(run, rows)
    run.lap("cluster_sample")
    out = write_outputs(run, rows, plans["pool"])
    run.info.update(eval_images=len(eval_x), seed_images=len(seed_uids), world_size=run.comm.world)
    return report(run, plans["pool"], rows.cluster_table().shape[1], out)


def nothing_usable(run: Run, rows: Rows, pool: Plan) -> NoReturn:
    """No pool input is a usable image: write the manifest (every input with why it was dropped)
    and the skipped list, leave the directory marked incomplete (no shard, no record), and stop."""
    rows.clusters = np.zeros((len(rows.gid), 0), np.int64)
    write_parts(run.comm, rows, pool.partitions, run.work, 0)
    run.comm.barrier()
    if run.comm.is_main:
        start_writing(run.out)
        if pool.partitions:  # no input at all: no manifest rows to write
            merge_parts(run.out, run.work, len(pool.partitions))
        write_skipped(run.out, pool.skipped, run.work, pool.partitions)
    run.comm.barrier()
    left = {f["step"]: f["remaining"] for f in run.funnel}
    corrupt, junk = left["input"] - left["corrupt"], left["corrupt"] - left["junk"]
    where = ", ".join(run.c.sources)
    if not rows.total:
        found = "no image file (.png, .jpg, ...) or .tar shard sample"
        why = f"what they hold instead is listed in {run.out / TABLE}"
    else:
        found = f"no decodable image among {rows.total} inputs ({corrupt} could not be decoded, {junk} are junk)"
        why = f"{run.out / 'manifest.parquet'} gives the reason for each"
    raise DinoflowError(
        f"curate.sources ({where}) hold {found}: nothing to curate; {why}. Point curate.sources at "
        "images (or raise curate.max_pixels / curate.max_file_bytes if the images are larger than allowed)"
    )


def report(run: Run, pool: Plan, levels: int, out: dict[str, Any]) -> dict[str, Any]:
    """The ranks draw the report's PNGs side by side, then rank 0 writes curation.json/.html; every
    rank returns its short summary."""
    comm = run.comm
    s = pics = None
    if comm.rank < MAX_PICTURES:  # each drawing rank streams the manifest parts itself (no object crosses ranks)
        s = summarize(run.work, pool.partitions, levels, run.c.report_images)
        pics = pictures(run.c, s, run.funnel)
        draw_pictures(pics, Path(run.c.report_dir), comm.rank, comm.world)
    comm.barrier()
    summary: dict[str, Any] = {"funnel": run.funnel}
    if comm.is_main:
        assert s is not None and pics is not None
        info = dict(run.info)
        skipped = info.pop("skipped")  # what the source held besides inputs: all of it in skipped.jsonl
        info["skipped_reasons"] = skipped["first"]
        info["skipped_files"] = [d["path"] for d in skipped["first"]]
        info["skipped_count"] = skipped["entries"]
        info["skipped_list"] = str(run.out / skipped["name"])
        run.lap("report")
        info["seconds"] = dict(run.seconds)
        summary = write_report(
            run.c,
            s,
            funnel=run.funnel,
            pics=pics,
            cluster_info=info.pop("clusters", {}),
            retrieval_info=info.pop("retrieval", {}),
            extra=info,
        )
    comm.barrier()
    return summary
