"""Atomic file output: a killed stage never leaves a half-written file that a later stage trusts."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dinoflow.errors import DinoflowError, full_disk_error, storage_error


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the destination's directory; rename it over `path` on success.

    A full disk, a read-only file system or a permission problem raises `StorageError` naming
    `path` (also when the writer reports a full disk in its own words, e.g. PyTorch's
    `unexpected pos`); the temp file is removed either way.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (storage_error(e, path) or e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; outputs are read by other users (containers, pipeline steps)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except DinoflowError:
        raise
    except Exception as e:
        named = storage_error(e, path) or full_disk_error(e, [path.parent], path)
        if named is None:
            raise
        raise named from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
