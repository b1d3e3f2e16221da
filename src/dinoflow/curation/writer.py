"""Write the kept images to WebDataset shards from the rows actually ingested, never by position.

The shard plan is the kept rows in gid order, `shard_size` per shard; shard j is written by rank
j % world. Each kept row is read again from the file (or shard member, or object) its partition
recorded, and its bytes must still have the sha256 recorded at ingest: a file changed or removed
since is an error that names it (and the partition is forgotten, so the rerun ingests it again),
never another file's pixels under this uid. A shard whose planned content (keys, metadata,
content hashes, max side) matches what an earlier run wrote is kept as it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from dinoflow.config import CurateConfig
from dinoflow.curation.ingest import decode_item, invalidate, load_partition
from dinoflow.curation.manifest import read_part
from dinoflow.curation.partitions import Partition
from dinoflow.data import s3
from dinoflow.data.decode import resize_max_side
from dinoflow.data.shards import iter_shard, shard_name, write_shard
from dinoflow.data.sources import Entry, read_entry_bytes
from dinoflow.digest import file_sha256
from dinoflow.distributed.comm import Comm
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_json

SHARD_FORMAT = 2
PREFIX = "shards"


def shard_key(gid: int) -> str:
    return f"{gid:012d}"


def plan_shards(kept_per_part: np.ndarray, shard_size: int) -> list[list[tuple[int, int, int]]]:
    """For each shard, the (partition, first kept position, last kept position + 1) ranges it takes."""
    ends = np.cumsum(kept_per_part)
    starts = ends - kept_per_part
    total = int(ends[-1]) if len(ends) else 0
    plan = []
    for lo in range(0, total, shard_size):
        hi = min(total, lo + shard_size)
        parts = np.flatnonzero((starts < hi) & (ends > lo))
        plan.append(
            [(int(p), max(lo, int(starts[p])) - int(starts[p]), min(hi, int(ends[p])) - int(starts[p])) for p in parts]
        )
    return plan


def _shard_rows(
    work: Path, parts: list[Partition], first_gid: np.ndarray, ranges: list[tuple[int, int, int]], levels: int
) -> list[dict]:
    """The kept rows of one shard: key, metadata and where to read them."""
    out = []
    for p, a, b in ranges:
        cols = ["uid", "source", "status"] + [f"cluster_l{lvl}" for lvl in range(levels)]
        m = read_part(work, p, cols).to_pydict()
        recs, _ = load_partition(work, parts[p], embeddings=False)
        rec = recs.select(["ref", "member", "content_sha256", "entry"]).to_pydict()
        kept = [i for i, s in enumerate(m["status"]) if s == "kept"][a:b]
        for i in kept:
            meta = {
                "uid": m["uid"][i],
                "source": m["source"][i],
                "clusters": [int(m[f"cluster_l{lvl}"][i]) for lvl in range(levels)],
            }
            out.append(
                {
                    "key": shard_key(int(first_gid[p]) + i),
                    "meta": meta,
                    "part": p,
                    "ref": rec["ref"][i],
                    "member": rec["member"][i],
                    "sha256": rec["content_sha256"][i],
                    "entry": rec["entry"][i],
                }
            )
    return out


def _digest(samples: list[dict], max_side: int) -> str:
    h = hashlib.sha256(f"v{SHARD_FORMAT}:{max_side}".encode())
    for s in samples:
        h.update(json.dumps([s["key"], s["meta"], s["sha256"]], sort_keys=True).encode())
    return h.hexdigest()


def _read_all(samples: list[dict], max_bytes: int) -> list[bytes | None]:
    """The current bytes of every sample (None when gone or no longer readable within `max_bytes`),
    reading each shard source once."""
    out: list[bytes | None] = [None] * len(samples)
    by_tar: dict[bytes, dict[bytes, int]] = {}
    for j, s in enumerate(samples):
        ref = os.fsdecode(s["ref"])
        if s["member"]:
            by_tar.setdefault(s["ref"], {})[s["member"]] = j
        else:
            data, err = read_entry_bytes(Entry(ref, "image", ref), max_bytes)
            out[j] = None if err else data
    for tar_ref, members in by_tar.items():
        path = os.fsdecode(tar_ref)
        if not s3.is_s3_url(path) and not Path(path).is_file():
            continue
        for sample in iter_shard(path, max_member_bytes=max_bytes):
            slot = members.get(os.fsencode(sample.key))
            if slot is not None and sample.error is None:
                out[slot] = sample.data
    return out


def _png(data: bytes, max_pixels: int, max_side: int) -> bytes:
    img, why = decode_item(data, None, max_pixels)
    if img is None:
        raise DinoflowError(f"an ingested image no longer decodes ({why})")
    buf = io.BytesIO()
    resize_max_side(img, max_side).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _write_one(out: Path, name: str, samples: list[dict], parts: list[Partition], work: Path, c: CurateConfig) -> None:
    datas: list[bytes] = []
    for s, data in zip(samples, _read_all(samples, c.max_file_bytes)):
        if data is None or hashlib.sha256(data).hexdigest() != s["sha256"]:
            invalidate(work, parts[s["part"]])
            what = "is gone" if data is None else "changed (its content hash differs)"
            raise DinoflowError(
                f"{s['meta']['uid']!r} ({os.fsdecode(s['ref'])}{'#' + os.fsdecode(s['member']) if s['member'] else ''}) "
                f"{what} since curate ingested it; no shard was written with it. Rerun curate to ingest the current pool."
            )
        datas.append(data)
    write_shard(
        out / name, [(s["key"], _png(d, c.max_pixels, c.max_side), "png", s["meta"]) for s, d in zip(samples, datas)]
    )


def write_shards(
    comm: Comm,
    c: CurateConfig,
    parts: list[Partition],
    first_gid: np.ndarray,
    kept_per_part: np.ndarray,
    work: Path,
    levels: int,
    show: bool = True,
) -> tuple[list[dict], int]:
    """Write this rank's shards of the plan (first_gid [P]: gid of each partition's first row).

    Returns every shard's record (name, bytes, sha256, samples) and how many shards were reused.
    """
    from tqdm import tqdm

    out = Path(c.out_dir)
    plan = plan_shards(kept_per_part, c.shard_size)
    state_dir = work / "shards"
    reused = 0
    mine = range(comm.rank, len(plan), comm.world)
    for j in tqdm(mine, desc="curate: shards", unit="shard", disable=not show, mininterval=1.0):
        name = shard_name(PREFIX, j)
        samples = _shard_rows(work, parts, first_gid, plan[j], levels)
        digest = _digest(samples, c.max_side)
        state_path = state_dir / f"{name}.json"
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if (
            state.get("digest") == digest
            and (out / name).is_file()
            and (out / name).stat().st_size == state.get("bytes")
        ):
            reused += 1
            continue
        _write_one(out, name, samples, parts, work, c)
        atomic_write_json(
            state_path,
            {
                "digest": digest,
                "bytes": (out / name).stat().st_size,
                "sha256": file_sha256(out / name),
                "samples": len(samples),
            },
        )
    reused = comm.sum_int(reused)
    comm.barrier()
    records = []
    for j in range(len(plan)):
        name = shard_name(PREFIX, j)
        st = json.loads((state_dir / f"{name}.json").read_text())
        records.append({"name": name, "bytes": st["bytes"], "sha256": st["sha256"], "samples": st["samples"]})
    if comm.is_main:
        for p in out.glob(f"{PREFIX}-*.tar"):  # shards of an earlier, larger plan
            if p.name not in {r["name"] for r in records}:
                p.unlink()
    return records, reused
