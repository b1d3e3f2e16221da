"""Skipped lists: what the listing and the readers skipped, each by name with its reason.

A pool can hold any number of files that are not inputs and a shard any number of repeated
members, so these lists have no size bound and never go into metadata (a Parquet footer over its
reader's limit cannot be read back). They live in JSON-lines files, read back line by line: one
per partition beside its embedding shard (`<name>.skipped.jsonl`, written before the partition's
table), merged with the listing's into `skipped.jsonl` next to the manifest. curation.json holds
their count and the first `REPORTED` of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from dinoflow.curation.partitions import Partition
from dinoflow.io import atomic_path

TABLE = "skipped.jsonl"
REPORTED = 1000


def part_skipped_path(work: Path, part: Partition) -> Path:
    return work / "parts" / f"{part.name}.skipped.jsonl"


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def write_part_skipped(work: Path, part: Partition, notes: list[dict[str, str]]) -> None:
    """What reading `part` skipped ({"path", "reason"} each)."""
    _write_lines(part_skipped_path(work, part), notes)


def iter_part_skipped(work: Path, part: Partition) -> Iterator[dict[str, str]]:
    """A partition's skipped entries, with its source; none for a partition that recorded none."""
    try:
        f = open(part_skipped_path(work, part), encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if line.strip():
                yield {"source": part.source, **json.loads(line)}


def write_skipped(out: Path, listing: list[dict[str, str]], work: Path, parts: list[Partition]) -> dict[str, Any]:
    """Merge the listing's and every partition's skipped entries into `out/skipped.jsonl`.

    Returns {"name", "entries", "first"} (`first`: the first `REPORTED` entries, for the report).
    """
    first: list[dict[str, str]] = []

    def rows() -> Iterator[dict[str, str]]:
        for row in listing:
            yield row
        for part in parts:
            yield from iter_part_skipped(work, part)

    def kept(it: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
        for row in it:
            if len(first) < REPORTED:
                first.append(row)
            yield row

    n = _write_lines(out / TABLE, kept(rows()))
    return {"name": TABLE, "entries": n, "first": first}
