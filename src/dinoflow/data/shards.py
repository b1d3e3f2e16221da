"""WebDataset-style tar shards: `<prefix>-000000.tar` holding `<key>.<png|jpg>` + `<key>.json` per sample.

Writing: `ShardWriter` buffers one shard in memory, then writes it to a temp file and renames it
into place, so a killed writer never leaves a half shard that a reader would trust. Shard bytes
are a pure function of the samples: members are sorted by key, and every tar header has a fixed
mtime (0), mode (0644), uid/gid (0) and empty user/group names, so the same input gives
byte-identical shards (what DVC and the "same seed, same bytes" test rely on).

Reading: `iter_shard(url)` streams one shard (local path or s3://) through `tarfile` in stream
mode and groups consecutive members by key, as WebDataset does (key = member path up to the first
dot of its file name). Malformed members and samples are skipped and counted in `ShardStats`,
never raised: one bad sample must not stop a training run or a curation pass.

No member is trusted with memory: a member over `max_member_bytes` (from its header), a sparse
member (its header can claim gigabytes the shard does not hold) and a link, device or FIFO member
are refused unread, and their sample is yielded with `error` set and no data; an extended header
over `MAX_HEADER_BYTES` stops the shard. A repeated member name, or a key whose members come back
after other keys', is not read again: the first is kept and the repeat is counted and reported
through `on_skip`, so every key is yielded at most once per shard.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from botocore.exceptions import BotoCoreError

from dinoflow.data import s3
from dinoflow.data.formats import IMAGE_SUFFIXES
from dinoflow.data.limits import MAX_FILE_BYTES
from dinoflow.data.tar_guards import BoundedInfo, HeaderTooLarge, SeenMembers, refusal
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_path

IMAGE_EXTS = tuple(s.removeprefix(".") for s in IMAGE_SUFFIXES)  # shard members: "000017.png" → "png"
META_EXT = "json"
TAR_MTIME = 0
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-/]+$")


@dataclass
class Sample:
    """One shard sample: image bytes (`ext` says their format), its JSON metadata, and any extra members."""

    key: str
    data: bytes
    ext: str
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, bytes] = field(default_factory=dict)  # e.g. {"cls": b"3"}
    shard: str = ""  # the URL or path it came from
    error: str | None = None  # why a member of it was refused unread (then `data` is b"")


@dataclass
class ShardStats:
    """What `iter_shard` skipped, per kind. `samples` counts the samples it yielded."""

    samples: int = 0  # refused samples (with `error`) included
    skipped_members: int = 0  # directories, members without an extension
    refused_members: int = 0  # sparse, link/device/FIFO or over the byte limit: not read, the sample carries why
    repeated_members: int = 0  # a member name or a key's group seen before in the shard: the first is kept
    bad_meta: int = 0  # .json that is not a JSON object (the sample is kept with meta={})
    missing_data: int = 0  # a key with no image member (the sample is skipped)
    extra_images: int = 0  # a second image member for a key (the first one is kept)
    truncated: int = 0  # the tar stream ended inside a member (the partial sample is dropped)
    unreadable_tail: int = 0  # shards whose reading stopped at a corrupt header before the end
    unreadable_shards: int = 0  # shards that could not be opened as a tar at all

    def add(self, other: "ShardStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def problems(self) -> int:
        return sum(v for k, v in self.as_dict().items() if k != "samples")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def check_key(key: str) -> str:
    """Keys become tar member names `<key>.<ext>`: letters, digits, `_`, `-` and `/` only (no dots)."""
    if not key or not _KEY_RE.match(key) or key.startswith("/") or key.endswith("/") or "//" in key:
        raise ValueError(
            f"shard key {key!r} is not allowed: use letters, digits, '_', '-' and inner '/' only "
            "(a dot would split the key from its extension)"
        )
    return key


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):  # numpy arrays
        return o.tolist()
    raise TypeError(f"metadata value {o!r} of type {type(o).__name__} is not JSON-serialisable")


def encode_meta(meta: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no spaces) so equal metadata gives equal bytes."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = TAR_MTIME
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def write_shard(path: str | Path, samples: Iterable[tuple[str, bytes, str, dict[str, Any]]]) -> Path:
    """Write one shard atomically from (key, data, ext, meta) tuples, sorted by key. Returns the path."""
    rows = sorted(samples, key=lambda r: r[0])
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for key, data, ext, meta in rows:
                tf.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
                mb = encode_meta(meta)
                tf.addfile(_tarinfo(f"{key}.{META_EXT}", len(mb)), io.BytesIO(mb))
    return path


class ShardWriter:
    """Write samples into `out_dir/<prefix>-NNNNNN.tar`, `shard_size` samples per shard.

    Use as a context manager. On a clean exit the last (partial) shard is written and shards with
    the same prefix left over from an earlier, longer run are removed; if the block raises, the
    buffered partial shard is discarded (shards already completed stay: each is whole).
    `start_index` lets a resumed writer continue numbering after shards it did not rewrite.

        with ShardWriter("data/curated", 1000) as w:
            w.write("000001", png_bytes, "png", {"uid": "pool/img_1.png"})
        w.paths  # the shard files written, in order
    """

    def __init__(
        self,
        out_dir: str | Path,
        shard_size: int,
        prefix: str = "shards",
        *,
        start_index: int = 0,
        remove_stale: bool = True,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"shard prefix {prefix!r} must be a plain file-name prefix")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.prefix = prefix
        self.index = start_index
        self.remove_stale = remove_stale
        self.paths: list[Path] = []
        self.n_samples = 0
        self._buf: list[tuple[str, bytes, str, dict[str, Any]]] = []
        self._keys: set[str] = set()
        self._closed = False

    def write(self, key: str, data: bytes, ext: str = "png", meta: dict[str, Any] | None = None) -> None:
        """Add one sample; a full shard is written to disk immediately."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        check_key(key)
        ext = ext.lower().lstrip(".")
        if ext not in IMAGE_EXTS:
            raise ValueError(f"image extension {ext!r} not supported in shards; use one of {IMAGE_EXTS}")
        if key in self._keys:
            raise ValueError(f"duplicate shard key {key!r}: every sample needs its own key")
        self._keys.add(key)
        self._buf.append((key, bytes(data), ext, dict(meta or {})))
        if len(self._buf) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        path = self.out_dir / shard_name(self.prefix, self.index)
        write_shard(path, self._buf)
        self.paths.append(path)
        self.n_samples += len(self._buf)
        self.index += 1
        self._buf = []

    def close(self) -> list[Path]:
        """Write the last partial shard, remove stale higher-numbered shards; returns all shard paths."""
        if self._closed:
            return self.paths
        self._flush()
        self._closed = True
        if self.remove_stale:
            for p in self.out_dir.glob(f"{self.prefix}-*.tar"):
                m = re.fullmatch(re.escape(self.prefix) + r"-(\d{6})\.tar", p.name)
                if m and int(m.group(1)) >= self.index:
                    p.unlink()
        return self.paths

    def abort(self) -> None:
        """Drop the buffered partial shard; keep completed shards."""
        self._buf = []
        self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------- reading


def list_shards(source: str | Path) -> list[str]:
    """The `.tar` shards of a source, sorted: a local directory (top level), one local `.tar`,
    or an `s3://bucket/prefix` (every `.tar` object under the prefix, as s3:// URLs)."""
    src = str(source)
    if s3.is_s3_url(src):
        u = s3.parse_s3_url(src)
        return [f"s3://{u.bucket}/{k}" for k in s3.list_keys(src, suffixes=(".tar",))]
    p = Path(src)
    if p.is_file():
        if p.suffix.lower() != ".tar":
            raise DinoflowError(f"{src} is not a .tar shard")
        return [str(p)]
    if p.is_dir():
        return sorted(str(q) for q in p.iterdir() if q.is_file() and q.name.lower().endswith(".tar"))
    raise DinoflowError(
        f"shard source {src} does not exist: give a directory of .tar shards, a .tar file or s3://bucket/prefix"
    )


def _split_name(name: str) -> tuple[str, str] | None:
    """`a/b/000123.seg.png` → ("a/b/000123", "seg.png"); None without an extension."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{head}/{stem}" if head else stem), ext.lower()


class _Group:
    def __init__(self, key: str) -> None:
        self.key = key
        self.data: bytes | None = None
        self.ext = ""
        self.meta: dict[str, Any] = {}
        self.extras: dict[str, bytes] = {}
        self.error: str | None = None


def _finish(group: _Group, url: str, stats: ShardStats) -> Sample | None:
    if group.error is not None:
        stats.samples += 1
        return Sample(group.key, b"", group.ext, group.meta, {}, url, error=group.error)
    if group.data is None:
        stats.missing_data += 1
        return None
    stats.samples += 1
    return Sample(group.key, group.data, group.ext, group.meta, group.extras, url)


def _add_member(group: _Group, ext: str, payload: bytes, stats: ShardStats) -> None:
    if ext == META_EXT:
        try:
            meta = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if isinstance(meta, dict):
            group.meta = meta
        else:
            stats.bad_meta += 1
    elif ext in IMAGE_EXTS:
        if group.data is None:
            group.data, group.ext = payload, ext
        else:
            stats.extra_images += 1
    else:
        group.extras[ext] = payload


def _open(url: str) -> Any:
    if s3.is_s3_url(url):
        return s3.open_stream(url)
    try:
        return open(url, "rb")
    except FileNotFoundError:
        raise DinoflowError(f"shard {url} does not exist") from None


def iter_shard(
    url: str | Path,
    stats: ShardStats | None = None,
    *,
    max_member_bytes: int = MAX_FILE_BYTES,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[Sample]:
    """Stream the samples of one shard (local path or s3:// URL), in file order.

    Pass a `ShardStats` to learn what was skipped; nothing malformed raises. A shard that is not a
    tar at all counts as `unreadable_shards`. A sample with a refused member (see the module
    docstring) is yielded with `error` and no data. `on_skip(member name, reason)` hears of every
    repeated member that was not read. S3 errors (credentials, missing object) do raise a
    DinoflowError: those are setup problems, not bad data.
    """
    url = str(url)
    stats = stats if stats is not None else ShardStats()
    raw = _open(url)
    try:
        yield from _iter_stream(raw, url, stats, max_member_bytes, on_skip or (lambda name, why: None))
    finally:
        raw.close()


def _iter_stream(
    raw: Any, url: str, stats: ShardStats, max_bytes: int, on_skip: Callable[[str, str], None]
) -> Iterator[Sample]:
    try:
        tf = tarfile.open(fileobj=raw, mode="r|", tarinfo=BoundedInfo)
    except (tarfile.TarError, EOFError, OSError):
        stats.unreadable_shards += 1
        return
    group: _Group | None = None
    seen = SeenMembers()
    try:
        while (member := tf.next()) is not None:
            tf.members.clear()  # type: ignore[attr-defined]  # stream mode keeps every header it read; a shard may hold millions
            parts = _split_name(member.name)
            if member.isdir() or parts is None:
                stats.skipped_members += 1
                continue
            key, ext = parts
            why = seen.repeat(member.name, key)
            if why is not None:
                stats.repeated_members += 1
                on_skip(member.name, why)
                continue
            if group is not None and group.key != key:
                seen.keys.add(group.key)
                sample = _finish(group, url, stats)
                group = None
                if sample is not None:
                    yield sample
            if group is None:
                group = _Group(key)
            refused = refusal(member, max_bytes)
            if refused is not None:
                stats.refused_members += 1
                group.error = group.error or refused
                group.ext = group.ext or (ext if ext in IMAGE_EXTS else "")
                continue
            fh = tf.extractfile(member)
            payload = fh.read() if fh is not None else b""
            if len(payload) != member.size:
                raise EOFError("member shorter than its header says")
            _add_member(group, ext, payload, stats)
    except HeaderTooLarge:
        # The members read so far are whole; what follows the refused header is not read.
        stats.unreadable_tail += 1
    except (tarfile.TarError, EOFError, OSError, BotoCoreError):
        # The stream ended inside a member: the sample being assembled is incomplete.
        stats.truncated += 1
        group = None
    else:
        if _has_nonzero_tail(tf):
            stats.unreadable_tail += 1
    if group is not None:
        sample = _finish(group, url, stats)
        if sample is not None:
            yield sample


def _has_nonzero_tail(tf: tarfile.TarFile) -> bool:
    """True when the stream still holds data after tarfile stopped (a corrupt header mid-shard).

    In stream mode tarfile ends iteration silently at an invalid header; a well-formed tar has
    only zero padding after its end-of-archive block.
    """
    stream = tf.fileobj
    try:
        while True:
            chunk = stream.read(1 << 16)
            if not chunk:
                return False
            if chunk.strip(b"\0"):
                return True
    except Exception:  # noqa: BLE001 - best effort; a read error here also means a broken tail
        return True
