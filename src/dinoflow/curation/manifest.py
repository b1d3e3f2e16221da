"""The curated directory's manifest and its completeness record, and the check readers run on it.

- `manifest.parquet`: one row per input uid with `kept` or the reason it was dropped (written by
  rank 0 from per-partition parts, one row group each, so its bytes do not depend on the number of
  processes; no pandas metadata, no timestamps).
- `skipped.jsonl`: what the pool held besides inputs, by name and reason (`curation.skipped`).
- `manifest.json`: the completeness record, written LAST and atomically: every shard with its size,
  sha256 and sample count, and the manifest's (and the skipped list's) own size and sha256.
  Readers check its shape (`check_record`): a record edited by hand is a named error. Before a run touches any shard
  it removes both and leaves `CURATION_INCOMPLETE`, so a killed run never leaves an old manifest
  beside new shards, and `verify_curated` refuses the directory until a run finishes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dinoflow.curation.comm import Comm
from dinoflow.curation.rows import Rows
from dinoflow.curation.statuses import STATUSES
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_path, atomic_write_json, atomic_write_text

RECORD = "manifest.json"
TABLE = "manifest.parquet"
INCOMPLETE = "CURATION_INCOMPLETE"
RECORD_FORMAT = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
            cols[f"cluster_l{lvl}"] = pa.array(rows.clusters[sl, lvl], pa.int32())
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
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


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


def _read_record(source: str) -> dict | None:
    from dinoflow.data import s3

    if s3.is_s3_url(source):
        url = source.rstrip("/") + "/" + RECORD
        keys = s3.list_keys(url)
        return json.loads(s3.read_bytes(url)) if url.split("/", 3)[3] in keys else None
    p = Path(source) / RECORD
    return json.loads(p.read_text()) if p.is_file() else None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _file_problem(what: str, d: Any) -> str | None:
    if not isinstance(d, dict):
        return f"{what} is {type(d).__name__}, not an object"
    name, sha = d.get("name"), d.get("sha256")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return f"{what} has no plain file name (name: {name!r})"
    if not _int(d.get("bytes")):
        return f"{what} {name!r} has bytes {d.get('bytes')!r}, not a byte count"
    if not (isinstance(sha, str) and len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha)):
        return f"{what} {name!r} has no sha256 hex digest"
    return None


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    if record.get("format") != RECORD_FORMAT:
        return f"format is {record.get('format')!r}, expected {RECORD_FORMAT}"
    shards = record.get("shards")
    if not isinstance(shards, list):
        return f"shards is {type(shards).__name__}, not a list"
    for i, sh in enumerate(shards):
        why = _file_problem(f"shards[{i}]", sh) or (
            None if _int(sh.get("samples")) else f"shards[{i}] has samples {sh.get('samples')!r}, not a count"
        )
        if why:
            return why
    names = [sh["name"] for sh in shards]
    if len(set(names)) != len(names):
        return "a shard is listed twice"
    why = _file_problem("manifest", record.get("manifest"))
    if why is None and "skipped" in record:  # records of older runs have no skipped list
        why = _file_problem("skipped", record["skipped"])
    if why:
        return why
    if not isinstance(record.get("remaining"), dict):
        return "remaining is missing or not an object"
    return None


def check_record(record: Any, where: str) -> None:
    """Raise a DinoflowError naming what is wrong when `record` is not a completeness record as curate writes it."""
    why = _record_problem(record)
    if why:
        raise DinoflowError(
            f"{where} is not a curation record as `dinoflow curate` writes it ({why}); it is not meant to be "
            "edited: rerun `dinoflow curate` to write the directory and its record again"
        )


def verify_curated(source: str | Path, *, deep: bool = False) -> dict | None:
    """Check a shard directory (local or s3://) before training reads it.

    Returns the completeness record, or None for a plain shard directory that curate never wrote.
    Raises DinoflowError when curate started writing it and did not finish, or when a shard is
    missing, has another size (or, with `deep`, another sha256), or is not listed.
    """
    from dinoflow.data import s3
    from dinoflow.data.shards import list_shards

    src = str(source)
    try:
        record = _read_record(src)
    except (OSError, ValueError) as e:
        raise DinoflowError(f"{src}/{RECORD} cannot be read ({e}): rerun `dinoflow curate`") from None
    if record is None:
        local = not s3.is_s3_url(src)
        if local and ((Path(src) / INCOMPLETE).exists() or (Path(src) / TABLE).exists()):
            raise DinoflowError(
                f"{src} is an incomplete curated directory (no {RECORD}: the curate run that wrote it did not "
                "finish); rerun `dinoflow curate` before training on it"
            )
        return None
    check_record(record, f"{src}/{RECORD}")
    listed = {s["name"]: s for s in record["shards"]}
    present = {u.rsplit("/", 1)[-1]: u for u in list_shards(src)} if (s3.is_s3_url(src) or Path(src).is_dir()) else {}
    problems = [f"{n} is missing" for n in listed if n not in present]
    problems += [f"{n} is not in the manifest" for n in present if n not in listed]
    if not s3.is_s3_url(src):
        for name, s in listed.items():
            p = Path(src) / name
            if p.is_file() and p.stat().st_size != s["bytes"]:
                problems.append(f"{name} has {p.stat().st_size} bytes, the manifest says {s['bytes']}")
            elif deep and p.is_file() and sha256_file(p) != s["sha256"]:
                problems.append(f"{name} does not match its sha256 in the manifest")
    if problems:
        raise DinoflowError(
            f"curated directory {src} does not match its {RECORD}: "
            + "; ".join(problems[:5])
            + " — rerun `dinoflow curate`"
        )
    return record
