"""What a checkpoint's files held when they were written, and the check that they still do.

A flipped bit in a DCP shard loads without complaint (the tensors are raw bytes) and a resumed
run then trains on silently changed weights; a truncated shard ends in DCP's deep traceback. So
every checkpoint records, in its `meta.json`, the size and sha256 of each of its other files:
each rank hashes the shards it wrote (`__<rank>_*.distcp`, in the background for an asynchronous
save), the main rank hashes the rest (`.metadata`, the copied CSV) and writes them into
`meta.json` before the directory is renamed into place, so the record is published atomically
with the checkpoint and covers every file in it. Resume verifies them before loading anything,
each rank a share of the files; a mismatch is a `CheckpointError` naming the file, and the
message says whether an older checkpoint of the run verifies (deleting the damaged one resumes
from it: `latest_checkpoint` falls back to the newest complete checkpoint left) or none does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import torch.distributed as dist

from dinoflow.digest import file_sha256
from dinoflow.distributed.env import checkpoint_group
from dinoflow.train.safe_dcp import CheckpointError

DIGESTS_KEY = "files"  # meta.json: {file name: {"bytes": int, "sha256": hex}}
META = "meta.json"


class FileDigest(TypedDict):
    """What meta.json records of one checkpoint file."""

    bytes: int
    sha256: str  # hex


Digests = dict[str, FileDigest]  # file name (in the checkpoint folder) → its digest


def digest(path: Path) -> FileDigest:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def own_shards(ckpt: Path, rank: int) -> Digests:
    """Digests of the shard files rank `rank` wrote into `ckpt` (DCP names them `__<rank>_<i>.distcp`)."""
    return {p.name: digest(p) for p in sorted(ckpt.glob(f"__{rank}_*.distcp"))}


def complete_digests(ckpt: Path, known: Digests) -> Digests:
    """`known` plus the digests of every other file in `ckpt` but meta.json: the whole record."""
    out = dict(known)
    for p in sorted(ckpt.iterdir()):
        if p.name != META and p.name not in out:
            out[p.name] = digest(p)
    return out


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (collective over the checkpoint group; [obj] in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=checkpoint_group())
    return out


def recorded(ckpt: Path) -> dict[str, dict[str, Any]]:
    try:
        meta = json.loads((ckpt / META).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / META} is unreadable ({e})") from None
    files = meta.get(DIGESTS_KEY) if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{ckpt / META} records no checksums of the checkpoint's files")
    return files


def problems(ckpt: Path, rank: int = 0, world: int = 1) -> list[str]:
    """What does not match the record, in this rank's share of the files (every file when world=1)."""
    try:
        files = recorded(ckpt)
    except CheckpointError as e:
        return [str(e)] if rank == 0 else []
    found = [] if rank else [f"{ckpt / n} is not recorded in {META}" for n in _unrecorded(ckpt, files)]
    for i, (name, want) in enumerate(sorted(files.items())):
        if i % world != rank:
            continue
        path = ckpt / str(name)
        if not path.is_file():
            found.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        want = want if isinstance(want, dict) else {}
        if size != want.get("bytes"):
            found.append(f"{path} has {size} bytes, {want.get('bytes')} when written (truncated or replaced)")
        elif file_sha256(path) != want.get("sha256"):
            found.append(f"{path} does not match its sha256 recorded when it was written (its bytes changed)")
    return found


def _unrecorded(ckpt: Path, files: dict[str, Any]) -> list[str]:
    return sorted(p.name for p in ckpt.iterdir() if p.name != META and p.name not in files)


def verify_checkpoint(ckpt: Path) -> None:
    """Collective: raise a CheckpointError naming each damaged file of `ckpt` and what to do."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    found = [p for part in gather(problems(ckpt, rank, world)) for p in part]
    if not found:
        return
    older = _verified_older(ckpt, rank, world)
    todo = (
        f"the previous checkpoint {older} verifies: delete {ckpt} and rerun to resume from it, "
        if older is not None
        else "no older checkpoint of this run verifies: "
    )
    raise CheckpointError(
        f"checkpoint {ckpt} is damaged and was not loaded: {'; '.join(found[:10])}"
        f"{f' (and {len(found) - 10} more)' if len(found) > 10 else ''}. The storage under it may be failing; "
        f"{todo}or set train.restart=true (or delete {ckpt.parent}) to start over"
    )


def _verified_older(ckpt: Path, rank: int, world: int) -> Path | None:
    """The newest complete checkpoint before `ckpt` in its directory whose files all verify (collective)."""
    older = sorted((d for d in ckpt.parent.glob("step_*") if d.is_dir() and d.name < ckpt.name), reverse=True)
    for d in older:
        if (d / META).is_file() and not any(gather(problems(d, rank, world))):
            return d
    return None
