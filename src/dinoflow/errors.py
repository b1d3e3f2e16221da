"""User-facing errors: the CLI prints these without a traceback and exits non-zero.

Messages are bounded (`MAX_MESSAGE_CHARS`): an error built from hostile input (a huge YAML
value, a long list of bad files) must not itself become the problem.

Failed writes are named errors too: a full disk, a read-only file system, a permission problem.

Without this a full disk reads as whatever the writing library makes of a short write (PyTorch's
zip writer: `unexpected pos 704 vs 598`; pyarrow, sqlite and DCP have their own words). Two ways in:

- `storage_error(exc, path)`: an `OSError` with one of `STORAGE_ERRNOS` (found anywhere in the
  exception's cause/context chain, or in a distributed-checkpoint failure map) → `StorageError`
  naming the path and what to do;
- `full_disk_error(exc, paths)`: any other exception raised while writing under `paths` when
  one of them now has less than `FULL_BYTES` free → `StorageError` "no space left on <path>"
  (never for a virtual file system such as /proc, which holds no files and always shows 0 free);
- `output_dir_problem(path)`: why a folder cannot be written before a stage starts (a file in
  its path, a virtual file system, no permission), so a stage can refuse it up front.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

MAX_MESSAGE_CHARS = 4000


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f" … [{len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note


class DinoflowError(RuntimeError):
    """A problem the user can fix (bad input, unreachable service, missing file); the message says how.

    `exit_code` is what the CLI exits with when this error ends a stage.
    """

    exit_code = 1

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(bounded(str(message)), *args)


class ConfigError(DinoflowError, ValueError):
    """A configuration problem, phrased for the person who wrote params.yaml (exit code 2)."""

    exit_code = 2


FULL_BYTES = 1 << 20  # a write failed and under 1 MiB is left: the disk filled up

STORAGE_ERRNOS = {
    errno.ENOSPC: (
        "no space left on the device holding {path}",
        "free space there, or point the stage's output elsewhere",
    ),
    errno.EDQUOT: (
        "disk quota exceeded writing {path}",
        "free space in your quota, or point the stage's output elsewhere",
    ),
    errno.EROFS: (
        "{path} is on a read-only file system",
        "point the stage's output at a writable location (e.g. a mounted volume)",
    ),
    errno.EACCES: ("permission denied on {path}", "fix its permissions (or its folder's), or use another location"),
    errno.EPERM: (
        "operation not permitted on {path}",
        "fix its permissions (or its folder's), or use another location",
    ),
    errno.ENOTDIR: (
        "a part of {path} is a file, not a folder",
        "point the stage's output at a path whose parents are folders",
    ),
}


class StorageError(DinoflowError):
    """Output could not be written (disk full, read-only, no permission); the message names the path."""


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """exc, its causes and contexts, and the per-rank failures of a DCP CheckpointException."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 50:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint.api.CheckpointException
        if isinstance(failures, dict):
            todo += [x for x in failures.values() if isinstance(x, BaseException)]
            todo += [x[0] for x in failures.values() if isinstance(x, tuple) and x and isinstance(x[0], BaseException)]


def find_os_error(exc: BaseException) -> OSError | None:
    """The first OSError with a storage errno in `exc`'s chain, or None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
    return None


def _free_text(path: Path) -> str:
    try:
        return f" ({free_bytes(path) / 2**20:.1f} MiB free)"
    except OSError:
        return ""


def free_bytes(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def holds_files(path: Path) -> bool:
    """False for a virtual file system (/proc, /sys: 0 bytes in all), where no output can be written."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).total > 0


def output_dir_problem(path: str | Path) -> str | None:
    """Why a stage could not create and write files in the folder `path`, or None; nothing is created."""
    p = Path(os.path.abspath(path))
    existing = next(a for a in (p, *p.parents) if os.path.exists(a))  # False on any error, not a raise
    if not existing.is_dir():
        return f"{existing} is not a folder" if existing == p else f"{existing} in its path is not a folder"
    try:
        if not holds_files(existing):
            return f"{existing} is on a virtual file system (like /proc or /sys) that holds no files"
    except OSError as e:
        return f"{existing} cannot be inspected ({e.strerror or e})"
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def storage_error(exc: BaseException, path: str | Path | None = None) -> StorageError | None:
    """A StorageError for `exc` when a storage errno is in its chain (None otherwise)."""
    os_err = find_os_error(exc)
    if os_err is None or os_err.errno not in STORAGE_ERRNOS:  # find_os_error's promise, spelled for mypy
        return None
    where = Path(os_err.filename) if isinstance(os_err.filename, (str, Path)) and os_err.filename else path
    what, todo = STORAGE_ERRNOS[os_err.errno]
    text = what.format(path=where if where is not None else "the output location")
    if os_err.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        text += _free_text(Path(where).parent)
    return StorageError(f"{text}: {todo}")


def full_disk_error(
    exc: BaseException, paths: Iterable[str | Path], target: str | Path | None = None
) -> StorageError | None:
    """A StorageError when a write (of `target`) failed with `exc` and one of `paths` has (almost) no space left."""
    for path in paths:
        try:
            free = free_bytes(Path(path))
            if not holds_files(Path(path)):
                continue  # /proc and friends show 0 free: not a full disk
        except OSError:
            continue
        if free < FULL_BYTES:
            detail = " ".join(str(exc).split())[:200]
            return StorageError(
                f"no space left on the device holding {target or path} ({free / 2**20:.1f} MiB free; the write failed with "
                f"{type(exc).__name__}: {detail}): free space there, or point the stage's output elsewhere"
            )
    return None
