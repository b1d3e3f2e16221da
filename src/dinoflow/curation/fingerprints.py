"""Whether a finished partition may be reused: the content of its files, not their size and mtime.

A partition's key (`partitions`) hashes its listing (paths, sizes, modification times): cheap, and
it catches most changes, but a file rewritten with the same size and its old mtime put back
(`touch -r`, a copy that keeps times) keeps its key. So ingest also records each entry's
fingerprint (the sha256 of its bytes, `data.sources.entry_fingerprint`) beside the partition, and
a rerun reuses a finished partition only when every entry still has it; otherwise the partition
is decoded and embedded again. Each rank checks the partitions it owns, so the re-read is spread
like the decoding it saves.
"""

from __future__ import annotations

import json
from pathlib import Path

from dinoflow.curation.partitions import Partition
from dinoflow.data.sources import entry_fingerprint
from dinoflow.io import atomic_write_json


def fingerprint_path(work: Path, part: Partition) -> Path:
    return work / "parts" / f"{part.name}.entries.json"


def write_fingerprints(work: Path, part: Partition, prints: list[str]) -> None:
    """Record one fingerprint per entry of `part`, in entry order."""
    atomic_write_json(fingerprint_path(work, part), {"entries": [e.rel for e in part.entries], "fingerprints": prints})


def unchanged(work: Path, part: Partition, max_bytes: int) -> bool:
    """True when every entry of `part` still holds what ingest read (False when unrecorded)."""
    try:
        recorded = json.loads(fingerprint_path(work, part).read_text())["fingerprints"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(recorded, list) or len(recorded) != len(part.entries):
        return False
    return all(entry_fingerprint(e, max_bytes) == r for e, r in zip(part.entries, recorded))
