"""Content hashes: what an output was made from (evaluate records them, register checks them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def arrays_sha256(groups: Iterable[Iterable[np.ndarray]], settings: dict[str, Any] | None = None) -> str:
    """sha256 over arrays (shape, dtype and bytes of each, in order) and a JSON-able settings dict.

    Groups are separated in the hash, so ([a, b], [c]) and ([a], [b, c]) differ.
    """
    h = hashlib.sha256()
    for i, group in enumerate(groups):
        h.update(f"group {i}\n".encode())
        for a in group:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    h.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()
