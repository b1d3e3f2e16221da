"""Raw inputs for curation: every image of a folder tree, a set of tar shards, or an s3:// prefix.

`iter_source(source)` yields `RawItem(uid, source, data)` in a deterministic order (sorted by
relative path / object key, then by position inside a shard). Items are not decoded here:
decoding (and dropping corrupt inputs with a reason) is the caller's job, so a corrupt file is
still an item with a uid that the curation manifest can account for.

Hidden files and folders (names starting with ".", e.g. an atomic writer's temp files) are not
inputs and are not listed; any other non-image file is listed in `SourceStats.skipped_files`.

uids are relative to the source root:
- an image file: its relative POSIX path, e.g. `a/img_001.png`;
- a shard sample: `<relative tar path>/<key>`, e.g. `shards-000000.tar/000017`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from dinoflow.data import s3
from dinoflow.data.shards import ShardStats, iter_shard
from dinoflow.errors import DinoflowError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
TAR_SUFFIX = ".tar"


@dataclass
class RawItem:
    """One undecoded input. `data` is b"" when the file could not be read (`error` says why)."""

    uid: str
    source: str
    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)  # a shard sample's JSON metadata
    error: str | None = None


@dataclass
class SourceStats:
    """What a source held besides the items yielded."""

    items: int = 0
    skipped_files: list[str] = field(default_factory=list)  # neither an image nor a .tar (relative paths)
    shards: ShardStats = field(default_factory=ShardStats)


def _kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    if low.endswith(TAR_SUFFIX):
        return "tar"
    return None


def _local_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under root, sorted (hidden files and dirs are skipped)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue  # temp files of an atomic writer, .DS_Store, ...
            out.append((rel_dir / name).as_posix())
    return sorted(out)


def _read_local(path: Path) -> tuple[bytes, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as e:
        return b"", f"unreadable: {e.strerror or e}"


def _tar_items(url: str, uid_prefix: str, source: str, stats: SourceStats) -> Iterator[RawItem]:
    for sample in iter_shard(url, stats.shards):
        yield RawItem(f"{uid_prefix}/{sample.key}", source, sample.data, sample.meta)


def iter_source(source: str | Path, stats: SourceStats | None = None) -> Iterator[RawItem]:
    """Every raw item of one source, in a deterministic order.

    `source` is a directory (searched recursively for images and .tar shards), a single image or
    .tar file, or `s3://bucket/prefix` (images and .tar objects under the prefix). Files of other
    types are skipped and listed in `stats.skipped_files`; malformed shard members are counted in
    `stats.shards`.
    """
    stats = stats if stats is not None else SourceStats()
    src = str(source)
    if s3.is_s3_url(src):
        yield from _iter_s3(src, stats)
        return
    root = Path(src)
    if root.is_file():
        kind = _kind(root.name)
        if kind == "tar":
            items = _tar_items(str(root), root.name, src, stats)
        elif kind == "image":
            data, err = _read_local(root)
            items = iter([RawItem(root.name, src, data, error=err)])
        else:
            raise DinoflowError(f"source {src} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a .tar shard")
        for item in items:
            stats.items += 1
            yield item
        return
    if not root.is_dir():
        raise DinoflowError(f"source {src} does not exist: give an image folder, a .tar shard (or a folder of them) or s3://bucket/prefix")
    for rel in _local_files(root):
        kind = _kind(rel)
        if kind is None:
            stats.skipped_files.append(rel)
            continue
        if kind == "tar":
            for item in _tar_items(str(root / rel), rel, src, stats):
                stats.items += 1
                yield item
        else:
            data, err = _read_local(root / rel)
            stats.items += 1
            yield RawItem(rel, src, data, error=err)


def _iter_s3(src: str, stats: SourceStats) -> Iterator[RawItem]:
    u = s3.parse_s3_url(src)
    # A prefix "a/b" lists "a/b/..." and "a/bc..."; treat it as a folder when it names one.
    prefix = u.key if (not u.key or u.key.endswith("/")) else u.key + "/"
    keys = s3.list_keys(f"s3://{u.bucket}/{prefix}")
    if not keys and u.key and not u.key.endswith("/"):
        keys = [k for k in s3.list_keys(src) if k == u.key]  # a single object
        prefix = u.key.rpartition("/")[0] + "/" if "/" in u.key else ""
    for key in keys:
        rel = key[len(prefix) :]
        kind = _kind(key)
        if kind is None:
            stats.skipped_files.append(rel)
            continue
        url = f"s3://{u.bucket}/{key}"
        if kind == "tar":
            for item in _tar_items(url, rel, src, stats):
                stats.items += 1
                yield item
        else:
            stats.items += 1
            yield RawItem(rel, src, s3.read_bytes(url))


def iter_sources(sources: Iterable[str | Path], stats: SourceStats | None = None) -> Iterator[RawItem]:
    """`iter_source` over several sources in the given order (uids stay relative to each source)."""
    for src in sources:
        yield from iter_source(src, stats)


def iter_source_batches(
    source: str | Path | Iterable[str | Path], batch_size: int, stats: SourceStats | None = None
) -> Iterator[list[RawItem]]:
    """`iter_source` (or `iter_sources` for a list) in lists of at most `batch_size` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    it = iter_source(source, stats) if isinstance(source, (str, Path)) else iter_sources(source, stats)
    batch: list[RawItem] = []
    for item in it:
        batch.append(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
