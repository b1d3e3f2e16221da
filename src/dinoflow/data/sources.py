"""Raw inputs for curation: every image of a folder tree, a set of tar shards, or an s3:// prefix.

A source is first *listed* (`list_source`: its image files and .tar shards, sorted by relative
path), then its entries are *read* (`iter_entry`: one item for an image, one per sample for a
shard). `iter_source(source)` does both and yields `RawItem(uid, source, data)` in that order.
Items are not decoded here: decoding (and dropping corrupt inputs with a reason) is the caller's
job, so a corrupt file is still an item with a uid that the curation manifest accounts for.

Listing policy (every file is either an entry or in `SourceStats.skipped_files` with a reason):
- hidden files and folders (names starting with ".": temp files of atomic writers, .git,
  .DS_Store) are not inputs: each is listed as skipped ("hidden"), a hidden folder once;
- symlinks are followed, to files and to folders; a folder reached a second time (a symlink
  loop, or two links to one folder) is read once and the other path is skipped with a reason;
- a folder that cannot be listed is skipped with the OS error;
- files that are neither images nor .tar shards are skipped ("not an image or .tar").

Reading never blocks and never trusts the file type from the name: a FIFO, socket or device
named `x.png`, a dangling symlink, a symlink loop and an unreadable file all become items with
an `error` (reported as `corrupt`), and a tar that is not readable is skipped with a reason.
A file (or shard member, or object) over `max_bytes` is an item with a `too_large` error, refused
from its size before its bytes are read (`dinoflow.data.limits`); a shard's repeated member is
skipped with a reason (`data.shards`).

uids are relative to the source root (bytes of a name that is not UTF-8 appear as `\\xNN`):
- an image file: its relative POSIX path, e.g. `a/img_001.png`;
- a shard sample: `<relative tar path>/<key>`, e.g. `shards-000000.tar/000017`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dinoflow.data import s3
from dinoflow.data.formats import IMAGE_SUFFIXES, TAR_SUFFIX
from dinoflow.data.limits import MAX_FILE_BYTES, too_large
from dinoflow.data.shards import ShardStats, iter_shard
from dinoflow.errors import DinoflowError

READ_CHUNK = 1 << 20


@dataclass
class RawItem:
    """One undecoded input. `data` is b"" when the file could not be read (`error` says why)."""

    uid: str
    source: str
    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)  # a shard sample's JSON metadata
    error: str | None = None
    entry: str = ""  # the listed file or object it came from (its uid for images)
    member: str = ""  # the shard key, for shard samples


@dataclass
class Entry:
    """One listed input file or object: `kind` "image" or "tar"; `ref` its local path or s3:// URL."""

    rel: str  # printable relative path (the uid of an image)
    kind: str
    ref: str
    size: int = -1
    mtime_ns: int = 0


@dataclass
class SourceStats:
    """What a source held besides the items yielded."""

    items: int = 0
    skipped_files: list[dict[str, str]] = field(default_factory=list)  # {"path": relative path, "reason": why}
    shards: ShardStats = field(default_factory=ShardStats)

    def skip(self, path: str, reason: str) -> None:
        self.skipped_files.append({"path": path, "reason": reason})


def printable(name: str) -> str:
    """A name as text: bytes that are not UTF-8 (held as surrogates by os functions) become `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    if low.endswith(TAR_SUFFIX):
        return "tar"
    return None


def _walk(root: Path, stats: SourceStats) -> list[tuple[str, str]]:
    """(relative path, absolute path) of every candidate file under root, following symlinks once per folder."""
    found: list[tuple[str, str]] = []
    seen: dict[tuple[int, int], str] = {}
    st = os.stat(root)
    seen[(st.st_dev, st.st_ino)] = "."
    todo = [(str(root), "")]
    while todo:  # depth first, in name order: the first path to reach a folder is always the same
        path, rel = todo.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda de: de.name)
        except OSError as e:
            stats.skip(printable(rel.rstrip("/")) or ".", f"folder cannot be listed: {e.strerror or e}")
            continue
        subdirs: list[tuple[str, str]] = []
        for de in entries:
            sub = rel + de.name
            if de.name.startswith("."):
                stats.skip(printable(sub), "hidden (names starting with '.' are not inputs)")
                continue
            try:
                is_dir = de.is_dir(follow_symlinks=True)
                key = (de.stat().st_dev, de.stat().st_ino) if is_dir else None
            except OSError:
                is_dir, key = False, None
            if is_dir and key is not None:
                if key in seen:
                    stats.skip(
                        printable(sub),
                        f"folder already listed as {printable(seen[key])!r} (symlink loop or second link): read once",
                    )
                    continue
                seen[key] = sub
                subdirs.append((de.path, sub + "/"))
            elif _kind(de.name) is None:
                stats.skip(printable(sub), "not an image or .tar")
            else:
                found.append((sub, de.path))
        todo.extend(reversed(subdirs))
    return sorted(found)


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, 0


def list_source(source: str | Path, stats: SourceStats | None = None) -> list[Entry]:
    """The image files and .tar shards of one source, sorted by relative path (see the module docstring).

    Raises DinoflowError when the source does not exist or is a file of another type.
    """
    stats = stats if stats is not None else SourceStats()
    src = str(source)
    if s3.is_s3_url(src):
        return _list_s3(src, stats)
    root = Path(src)
    if root.is_file():
        kind = _kind(root.name)
        if kind is None:
            raise DinoflowError(f"source {src} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a .tar shard")
        return [Entry(printable(root.name), kind, src, *_stat(src))]
    if not root.is_dir():
        raise DinoflowError(
            f"source {src} does not exist: give an image folder, a .tar shard (or a folder of them) or s3://bucket/prefix"
        )
    return [Entry(printable(rel), _kind(rel) or "", path, *_stat(path)) for rel, path in _walk(root, stats)]


def _list_s3(src: str, stats: SourceStats) -> list[Entry]:
    u = s3.parse_s3_url(src)
    # A prefix "a/b" lists "a/b/..." and "a/bc..."; treat it as a folder when it names one.
    prefix = u.key if (not u.key or u.key.endswith("/")) else u.key + "/"
    keys = s3.list_keys(f"s3://{u.bucket}/{prefix}")
    if not keys and u.key and not u.key.endswith("/"):
        keys = [k for k in s3.list_keys(src) if k == u.key]  # a single object
        prefix = u.key.rpartition("/")[0] + "/" if "/" in u.key else ""
    out = []
    for key in keys:
        rel = key[len(prefix) :]
        kind = _kind(key)
        if kind is None:
            stats.skip(rel, "not an image or .tar")
        else:
            out.append(Entry(rel, kind, f"s3://{u.bucket}/{key}"))
    return out


def read_local(path: str, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, str | None]:
    """A regular file's bytes, or (b"", why not). Never blocks: FIFOs and devices are refused unopened-for-data;
    a file over `max_bytes` is refused from its size (and stops being read if it grows past it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            return b"", "symlink loop"
        if e.errno == errno.ENOENT and os.path.islink(path):
            return b"", "dangling symlink"
        return b"", e.strerror or str(e)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "fifo"
                if stat.S_ISFIFO(mode)
                else "socket"
                if stat.S_ISSOCK(mode)
                else "device"
                if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode))
                else "directory"
                if stat.S_ISDIR(mode)
                else "special file"
            )
            return b"", f"not a regular file ({kind})"
        why = too_large("the file", os.fstat(fd).st_size, max_bytes)
        if why:
            return b"", why
        os.set_blocking(fd, True)
        parts, n = [], 0
        while n <= max_bytes and (chunk := os.read(fd, min(READ_CHUNK, max_bytes + 1 - n))):
            parts.append(chunk)
            n += len(chunk)
        return (b"", too_large("the file", n, max_bytes)) if n > max_bytes else (b"".join(parts), None)
    except OSError as e:
        return b"", e.strerror or str(e)
    finally:
        os.close(fd)


def read_entry_bytes(entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, str | None]:
    """The bytes of an image entry (local or s3), or (b"", why not) for a local file that cannot be
    read or an entry over `max_bytes` (an object is read no further than one byte past the limit)."""
    if not s3.is_s3_url(entry.ref):
        return read_local(entry.ref, max_bytes)
    body = s3.open_stream(entry.ref)
    try:
        with s3.s3_errors(s3.parse_s3_url(entry.ref).bucket, f"reading {entry.ref}"):
            data = body.read(max_bytes + 1)
    finally:
        body.close()
    why = too_large("the object", len(data), max_bytes)
    return (b"", why) if why else (data, None)


def _tar_readable(entry: Entry) -> str | None:
    """Why a local shard must not be opened (a FIFO would block the tar reader), or None."""
    if s3.is_s3_url(entry.ref):
        return None
    try:
        fd = os.open(entry.ref, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else (e.strerror or str(e))
    try:
        return None if stat.S_ISREG(os.fstat(fd).st_mode) else "not a regular file"
    finally:
        os.close(fd)


def entry_fingerprint(entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> str:
    """What an entry holds now: the sha256 of its bytes (streamed), or `error:<why>` when they cannot
    be read as an input (a FIFO, a file over `max_bytes`). Equal fingerprints: the same content,
    whatever its size and modification time say."""
    if entry.kind == "image":
        data, err = read_entry_bytes(entry, max_bytes)
        return f"error:{err}" if err else hashlib.sha256(data).hexdigest()
    why = _tar_readable(entry)
    if why:
        return f"error:{why}"
    h = hashlib.sha256()
    remote = s3.is_s3_url(entry.ref)
    try:
        raw = s3.open_stream(entry.ref) if remote else open(entry.ref, "rb")
    except OSError as e:  # gone since it was listed
        return f"error:{e.strerror or e}"
    guard = s3.s3_errors(s3.parse_s3_url(entry.ref).bucket, f"reading {entry.ref}") if remote else nullcontext()
    try:
        with guard:
            while chunk := raw.read(READ_CHUNK):
                h.update(chunk)
    except OSError as e:
        return f"error:{e.strerror or e}"
    finally:
        raw.close()
    return h.hexdigest()


def iter_entry(
    entry: Entry, source: str, stats: SourceStats | None = None, *, max_bytes: int = MAX_FILE_BYTES
) -> Iterator[RawItem]:
    """The items of one listed entry: the image itself, or every sample of a shard (in file order).

    A shard member that repeats a name is listed in `stats.skipped_files` as `<tar>/<member>`.
    """
    stats = stats if stats is not None else SourceStats()
    if entry.kind == "image":
        data, err = read_entry_bytes(entry, max_bytes)
        stats.items += 1
        yield RawItem(entry.rel, source, data, error=err, entry=entry.rel)
        return
    why = _tar_readable(entry)
    if why:
        stats.skip(entry.rel, f"shard cannot be read: {why}")
        return
    before, tail_before = stats.shards.unreadable_shards, stats.shards.unreadable_tail

    def skip(name: str, why: str) -> None:
        stats.skip(f"{entry.rel}/{printable(name)}", why)

    for sample in iter_shard(entry.ref, stats.shards, max_member_bytes=max_bytes, on_skip=skip):
        stats.items += 1
        key = printable(sample.key)
        yield RawItem(
            f"{entry.rel}/{key}", source, sample.data, sample.meta, sample.error, entry=entry.rel, member=sample.key
        )
    if stats.shards.unreadable_shards > before:
        stats.skip(entry.rel, "not a readable tar shard")
    elif stats.shards.unreadable_tail > tail_before:
        stats.skip(
            entry.rel,
            "reading stopped at a corrupt or oversized tar header (an extended header over 1 MiB): "
            "the members after it were not read",
        )


def iter_source(source: str | Path, stats: SourceStats | None = None) -> Iterator[RawItem]:
    """Every raw item of one source, in a deterministic order.

    `source` is a directory (searched recursively for images and .tar shards), a single image or
    .tar file, or `s3://bucket/prefix` (images and .tar objects under the prefix).
    """
    stats = stats if stats is not None else SourceStats()
    for entry in list_source(source, stats):
        yield from iter_entry(entry, str(source), stats)
