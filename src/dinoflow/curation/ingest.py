"""Decode + embed, partition by partition: each rank (and each of its data-loader workers) streams
its own partitions and writes one embedding shard per partition, with the rows' uids.

Per row: read (never blocking), decode safely → `corrupt` with the decoder's reason; junk guards
→ `junk`; else `ok` with its pixel hash and the sha256 of its bytes (what shard writing checks
before it trusts a file again). `ok` rows are embedded; a pixel-identical row within a partition
reuses the first one's embedding. Outputs per partition, in `<work>/parts/`:

    <name>.npy            [rows, D] float32 embeddings (zeros for rows that are not `ok`)
    <name>.skipped.jsonl  what reading it skipped, by name (`skipped`)
    <name>.entries.json   each entry's content fingerprint (`fingerprints`)
    <name>.parquet        the rows (uid, where to read them again, status, detail, hashes), written last

so a partition whose .parquet exists (and matches its .npy) is finished, and a rerun after a kill
reuses it while its entries' contents are unchanged. Only one partition's images are in memory
at a time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from dinoflow.config import CurateConfig
from dinoflow.curation.fingerprints import fingerprint_path, unchanged, write_fingerprints
from dinoflow.curation.junk import junk_reason
from dinoflow.curation.partitions import Partition
from dinoflow.curation.skipped import part_skipped_path, write_part_skipped
from dinoflow.data.decode import CorruptImage, decode_image, pixel_hash
from dinoflow.data.limits import TOO_LARGE
from dinoflow.data.sources import SourceStats, entry_fingerprint, iter_entry
from dinoflow.data.statuses import PARTITION_OK
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_path


@dataclass
class Notes:
    """What reading a partition found besides its rows."""

    skipped: list[dict[str, str]]  # {"path", "reason"}: members and files not read as rows
    fingerprints: list[str]  # one per entry: dinoflow.data.sources.entry_fingerprint


COLUMNS = ("uid", "entry", "ref", "member", "status", "detail", "pixel_hash", "content_sha256")


def decode_settings(c: CurateConfig, embedder_id: str) -> str:
    """What, besides the files, changes a partition's rows: part of its key."""
    return (
        f"{embedder_id}|max_pixels={c.max_pixels}|max_file_bytes={c.max_file_bytes}|min_side={c.min_side}"
        f"|min_std={c.min_std:g}|min_autocorr={c.min_autocorr:g}"
    )


def decode_item(data: bytes, error: str | None, max_pixels: int):
    """(RGB image or None, reason): the safe decoder's verdict on one raw item."""
    if error:  # a reader's refusal of an input over the byte limit carries its own reason
        return None, error if error.startswith(f"{TOO_LARGE}:") else f"unreadable: {error}"
    try:
        return decode_image(data, max_pixels=max_pixels), ""
    except CorruptImage as e:
        return None, f"{e.reason}: {e.detail}" if e.detail else e.reason


def decode_partition(part: Partition, c: CurateConfig) -> tuple[dict[str, list], list, list[int], Notes]:
    """Read and decode one partition: (columns, images of the rows to embed, their row indices,
    what was skipped and each entry's fingerprint)."""
    cols: dict[str, list] = {k: [] for k in COLUMNS}
    images, rows, prints = [], [], []
    stats = SourceStats()
    for entry in part.entries:
        if entry.kind != "image":  # before reading: a change while it is read shows on the next run
            prints.append(entry_fingerprint(entry, c.max_file_bytes))
        for item in iter_entry(entry, part.source, stats, max_bytes=c.max_file_bytes):
            if entry.kind == "image":  # the bytes just read: no second read of the file
                prints.append(f"error:{item.error}" if item.error else hashlib.sha256(item.data).hexdigest())
            img, why = decode_item(item.data, item.error, c.max_pixels)
            status, phash = "corrupt", ""
            if img is not None:
                phash = pixel_hash(img)
                junk = junk_reason(img, min_side=c.min_side, min_std=c.min_std, min_autocorr=c.min_autocorr)
                status, why = ("junk", junk) if junk else (PARTITION_OK, "")
            for k, v in zip(
                COLUMNS,
                (
                    part.uid_prefix + item.uid,
                    item.entry,
                    os.fsencode(entry.ref),
                    os.fsencode(item.member),
                    status,
                    why,
                    phash,
                    hashlib.sha256(item.data).hexdigest() if item.data else "",
                ),
            ):
                cols[k].append(v)
            if status == PARTITION_OK:
                images.append(img)
                rows.append(len(cols["uid"]) - 1)
    return cols, images, rows, Notes(list(stats.skipped_files), prints)


def embed_rows(cols: dict[str, list], images: list, rows: list[int], embedder: Any) -> np.ndarray:
    """[len(uid), D] float32: each `ok` row's embedding (pixel-identical rows embedded once), zeros elsewhere."""
    first: dict[str, int] = {}
    unique_imgs: list[Any] = []
    unique_rows: list[int] = []
    copies: list[tuple[int, int]] = []
    for img, r in zip(images, rows):
        j = first.setdefault(cols["pixel_hash"][r], len(unique_rows))
        if j == len(unique_rows):
            unique_imgs.append(img)
            unique_rows.append(r)
        copies.append((r, j))
    x = np.asarray(embedder(unique_imgs), np.float32) if unique_imgs else np.zeros((0, embedder.dim), np.float32)
    out = np.zeros((len(cols["uid"]), embedder.dim), np.float32)
    for r, j in copies:
        out[r] = x[j]
    return out


def part_paths(work: Path, part: Partition) -> tuple[Path, Path]:
    base = work / "parts" / part.name
    return base.with_suffix(".parquet"), base.with_suffix(".npy")


def write_partition(work: Path, part: Partition, cols: dict[str, list], emb: np.ndarray, notes: Notes) -> None:
    """Embeddings, skipped list and fingerprints first, rows last: the .parquet marks a finished partition."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_path, emb_path = part_paths(work, part)
    with atomic_path(emb_path) as tmp, open(tmp, "wb") as f:
        np.save(f, emb, allow_pickle=False)
    write_part_skipped(work, part, notes.skipped)
    write_fingerprints(work, part, notes.fingerprints)
    types = {"ref": pa.binary(), "member": pa.binary()}
    table = pa.table({k: pa.array(cols[k], types.get(k, pa.string())) for k in COLUMNS})
    meta = {"dinoflow.rows": str(len(emb)), "dinoflow.dim": str(emb.shape[1])}
    table = table.replace_schema_metadata(meta)
    with atomic_path(table_path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def partition_done(work: Path, part: Partition) -> bool:
    table_path, emb_path = part_paths(work, part)
    return table_path.is_file() and emb_path.is_file()


def load_partition(work: Path, part: Partition, *, embeddings: bool = True):
    """(rows table, embeddings [rows, D] memory-mapped or None) of a finished partition."""
    import pyarrow.parquet as pq

    table_path, emb_path = part_paths(work, part)
    try:
        table = pq.read_table(table_path)
        emb = np.load(emb_path, mmap_mode="r", allow_pickle=False) if embeddings else None
    except (OSError, ValueError) as e:
        raise DinoflowError(
            f"embedding shard {table_path.name} in {work} cannot be read ({e}); delete it and rerun"
        ) from None
    if emb is not None and emb.shape[0] != table.num_rows:
        raise DinoflowError(
            f"embedding shard {emb_path.name} has {emb.shape[0]} rows for {table.num_rows} uids; delete it and rerun"
        )
    return table, emb


def partition_row_count(work: Path, part: Partition) -> int:
    """Rows of a finished partition, from its table's footer (no row is read)."""
    import pyarrow.parquet as pq

    table_path = part_paths(work, part)[0]
    try:
        return int(pq.read_metadata(table_path).num_rows)
    except (OSError, ValueError) as e:
        raise DinoflowError(
            f"embedding shard {table_path.name} in {work} cannot be read ({e}); delete it and rerun"
        ) from None


def invalidate(work: Path, part: Partition) -> None:
    """Forget a finished partition (its files changed since): the next run decodes and embeds it again."""
    for p in (*part_paths(work, part), part_skipped_path(work, part), fingerprint_path(work, part)):
        p.unlink(missing_ok=True)


def reusable(work: Path, part: Partition, c: CurateConfig) -> bool:
    """A finished partition whose entries still hold what it was made from; a stale one is forgotten."""
    if not partition_done(work, part):
        return False
    if unchanged(work, part, c.max_file_bytes):
        return True
    invalidate(work, part)
    return False


def _decoded(parts: list[Partition], c: CurateConfig, workers: int) -> Iterator[tuple[Partition, tuple]]:
    if workers <= 0:
        for p in parts:
            yield p, decode_partition(p, c)
        return
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class _Parts(IterableDataset):  # each worker decodes every workers-th partition
        def __iter__(self):
            info = get_worker_info()
            wid, nw = (info.id, info.num_workers) if info else (0, 1)
            for p in parts[wid::nw]:
                yield p, decode_partition(p, c)

    yield from DataLoader(_Parts(), batch_size=None, num_workers=workers, collate_fn=lambda x: x)


def ingest_partitions(
    parts: list[Partition],
    c: CurateConfig,
    embedder: Any,
    work: Path,
    *,
    workers: int = 0,
    show: bool = True,
    on_partition: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Decode + embed every partition of `parts` that is not finished in `work`; returns counts."""
    from tqdm import tqdm

    todo = [p for p in parts if not reusable(work, p, c)]
    bar = tqdm(
        total=sum(len(p.entries) for p in todo),
        desc="curate: decode+embed",
        unit="file",
        disable=not show,
        mininterval=1.0,
    )
    for n, (part, (cols, images, rows, notes)) in enumerate(_decoded(todo, c, workers), start=1):
        write_partition(work, part, cols, embed_rows(cols, images, rows, embedder), notes)
        bar.update(len(part.entries))
        if on_partition is not None:
            on_partition(n)
    bar.close()
    return {"partitions_computed": len(todo), "partitions_reused": len(parts) - len(todo)}
