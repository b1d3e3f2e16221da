"""Writing the curated directory's manifest and its completeness record (readers:
`dinoflow.data.curated`).

- `manifest.parquet`: one row per input uid with `kept` or the reason it was dropped (written by
  rank 0 from per-partition parts, one row group each, so its bytes do not depend on the number of
  processes; no pandas metadata, no timestamps).
- `skipped.jsonl`: what the pool held besides inputs, by name and reason (`curation.skipped`).
- `manifest.json`: the completeness record, written LAST and atomically: every shard with its size,
  sha256 and sample count, and the manifest's (and the skipped list's) own size and sha256.
  Before a run touches any shard it removes both and leaves `CURATION_INCOMPLETE`, so a killed run never leaves an old manifest
  beside new shards, and `verify_curated` refuses the directory until a run finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dinoflow.curation.rows import Rows
from dinoflow.data.curated import INCOMPLETE, RECORD, RECORD_FORMAT, TABLE
from dinoflow.data.statuses import STATUSES
from dinoflow.digest import file_sha256
from dinoflow.distributed.comm import Comm
from dinoflow.io import atomic_path, atomic_write_json, atomic_write_text


def resolve_uids(comm: Comm, rows: Rows, gids: np.ndarray) -> list[str]:
    """The uid of each gid (held by any rank), asked from the rank that holds it."""
    gids = np.asarray(gids, np.int64)
    dest = rows.owner(gids)
    (want,), src = comm.all_to_all([gids], dest)
    width = int(comm.all_reduce_max(np.array([max((len(u.encode()) for u in rows.uid), default=0)], np.int64))[0])
    answer = np.zeros((len(want), max(1, width)), np.uint8)
    for j, g in enumerate(want - rows.gid[0] if len(rows.gid) else want):
        b = rows.uid[int(g)].encode()
        answer[j, : len(b)] = np.frombuffer(b, np.uint8)
    (back,) = comm.send_back([answer], src, dest)
    return [bytes(r).rstrip(b"\0").decode() for r in back]


def write_parts(comm: Comm, rows: Rows, plan_parts: list[Any], work: Path, levels: int) -> None:
    """Each rank writes the manifest rows of its partitions to `<work>/manifest-parts/<index>.parquet`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dups = np.flatnonzero(rows.dup_of >= 0)
    dup_uid = dict(zip(dups.tolist(), resolve_uids(comm, rows, rows.dup_of[dups])))
    start = 0
    for p_index, n in zip(rows.parts, rows.part_rows.tolist()):
        part = plan_parts[p_index]
        sl = slice(start, start + int(n))
        uids = rows.uid[sl]
        text = {
            "uid": uids,
            "source": [part.source] * len(uids),
            "path": [u[len(part.uid_prefix) :] for u in uids],
            "pixel_hash": rows.pixel_hash[sl],
            "status": [STATUSES[c] for c in rows.status[sl]],
            "detail": [str(d) for d in rows.detail[sl]],
            "duplicate_of": [dup_uid.get(i, "") for i in range(sl.start, sl.stop)],
        }
        cols: dict[str, Any] = {k: pa.array(v, pa.string()) for k, v in text.items()}  # typed: a part may be empty
        for lvl in range(levels):
            cols[f"cluster_l{lvl}"] = pa.array(rows.cluster_table()[sl, lvl], pa.int32())
        for name, v in rows.sims.items():
            cols[name] = pa.array(v[sl], pa.float32())
        with atomic_path(work / "manifest-parts" / f"{p_index:06d}.parquet") as tmp:
            pq.write_table(pa.table(cols), tmp, compression="zstd", write_statistics=False)
        start += int(n)


def read_part(work: Path, index: int, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    return pq.read_table(work / "manifest-parts" / f"{index:06d}.parquet", columns=columns)


def start_writing(out: Path) -> None:
    """Before any shard changes: no record, no table, and a marker a reader refuses."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / INCOMPLETE, "a curate run is writing this directory; it is complete when manifest.json exists\n"
    )
    for name in (RECORD, TABLE):
        (out / name).unlink(missing_ok=True)


def merge_parts(out: Path, work: Path, n_parts: int) -> Path:
    """Merge the manifest parts into `out/manifest.parquet` (one row group per part); returns its path."""
    import pyarrow.parquet as pq

    table_path = out / TABLE
    with atomic_path(table_path) as tmp:
        writer = None
        for i in range(n_parts):
            t = read_part(work, i)
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema, compression="zstd", write_statistics=False)
            writer.write_table(t)
        if writer is not None:
            writer.close()
    return table_path


def _file_record(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_manifest(
    out: Path, work: Path, n_parts: int, shards: list[dict], remaining: dict[str, int], skipped: str | None = None
) -> dict:
    """Merge the parts into manifest.parquet, then write the completeness record (last) and clear the marker.

    `remaining`: images left after each step, by step name (`input` first), as the report's funnel;
    `skipped`: the name of the skipped list already written in `out`, recorded with its hash."""
    table_path = merge_parts(out, work, n_parts)
    record = {"format": RECORD_FORMAT, "manifest": _file_record(table_path), "shards": shards, "remaining": remaining}
    if skipped is not None:
        record["skipped"] = _file_record(out / skipped)
    atomic_write_json(out / RECORD, record)
    (out / INCOMPLETE).unlink(missing_ok=True)
    return record
