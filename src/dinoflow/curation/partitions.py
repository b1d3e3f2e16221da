"""The pool split into partitions: the unit of decode + embed work, of caching and of resuming.

A partition is `chunk_size` consecutive image files of a source (sorted by relative path) or
one .tar shard. The split depends only on the listing, never on the number of processes, so a
partition's rows, its embeddings and their global row ids (gid: position in source order) are the
same whichever rank or Kubeflow task computes it. A partition's `key` hashes what it was made
from (relative paths, sizes, modification times, and the settings that change its rows), so a
rerun reuses a finished partition only when its files are unchanged.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from dinoflow.data.sources import Entry, SourceStats, list_source

PARTITION_FORMAT = 3  # 3: skipped lists and entry fingerprints beside the table


@dataclass
class Partition:
    """One unit of work: entries of one source. `index` is its position in its namespace's plan."""

    namespace: str  # "pool", "seeds", "eval0", ...
    index: int
    source: str
    uid_prefix: str  # "" for a single source, else "<source>/"
    entries: list[Entry] = field(default_factory=list)
    key: str = ""

    @property
    def name(self) -> str:
        return f"{self.namespace}-{self.index:06d}-{self.key[:20]}"


@dataclass
class Plan:
    """The partitions of one namespace, in source order, and what the listing skipped."""

    namespace: str
    partitions: list[Partition]
    skipped: list[dict[str, str]]

    def to_json(self) -> str:
        return json.dumps(
            {"namespace": self.namespace, "skipped": self.skipped, "partitions": [asdict(p) for p in self.partitions]},
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> "Plan":
        d = json.loads(text)
        parts = [Partition(**{**p, "entries": [Entry(**e) for e in p["entries"]]}) for p in d["partitions"]]
        return Plan(d["namespace"], parts, d["skipped"])


def _key(part: Partition, settings: str) -> str:
    h = hashlib.sha256(
        f"partition-v{PARTITION_FORMAT}|{settings}|{part.namespace}|{part.source}|{part.uid_prefix}".encode()
    )
    for e in part.entries:
        h.update(json.dumps([e.rel, e.kind, e.size, e.mtime_ns], ensure_ascii=True).encode())
    return h.hexdigest()


def _flush(parts: list[Partition], images: list[Entry], namespace: str, src: str, prefix: str) -> None:
    """The images gathered so far become one partition (in listing order); `images` is emptied."""
    if images:
        parts.append(Partition(namespace, len(parts), src, prefix, list(images)))
        images.clear()


def plan_partitions(namespace: str, sources: list[str], chunk_size: int, settings: str) -> Plan:
    """List `sources` and split them into partitions (`settings`: what else changes a partition's rows)."""
    parts: list[Partition] = []
    skipped: list[dict[str, str]] = []
    multi = len(sources) > 1
    for src in sources:
        stats = SourceStats()
        prefix = f"{src.rstrip('/')}/" if multi else ""
        images: list[Entry] = []
        for entry in list_source(src, stats):
            if entry.kind == "tar":
                _flush(parts, images, namespace, src, prefix)
                parts.append(Partition(namespace, len(parts), src, prefix, [entry]))
            else:
                images.append(entry)
                if len(images) >= chunk_size:
                    _flush(parts, images, namespace, src, prefix)
        _flush(parts, images, namespace, src, prefix)
        skipped += [{"source": src, **d} for d in stats.skipped_files]
    for p in parts:
        p.key = _key(p, settings)
    return Plan(namespace, parts, skipped)


def embed_owners(parts: list[Partition], world: int) -> list[int]:
    """The rank that decodes + embeds each partition (of every plan together): the largest first,
    each to the rank with the fewest bytes so far (ties: the lower rank), so ranks finish together.

    Only who computes an embedding shard depends on it, never what the shard holds; the global steps
    read the shards back by `rank_partitions`. Unknown sizes (s3 listings) count as one byte.
    """
    cost = [sum(max(e.size, 1) for e in p.entries) for p in parts]
    owners = [0] * len(parts)
    loads = [(0, r) for r in range(world)]  # a heap of (bytes so far, rank): the least loaded first
    for i in sorted(range(len(parts)), key=lambda i: -cost[i]):
        load, r = heapq.heappop(loads)
        owners[i] = r
        heapq.heappush(loads, (load + cost[i], r))
    return owners


def rank_partitions(rows: Sequence[int] | np.ndarray, rank: int, world: int) -> range:
    """The contiguous block of partition indices a rank holds in the global steps, given the rows of
    every partition: block r ends at the partition boundary nearest to (r + 1)/world of all rows, so
    ranks hold about equal rows (as equal as partition sizes allow) and rank order is gid order."""
    cum = np.concatenate([[0], np.cumsum(np.asarray(rows, np.int64))])

    def boundary(r: int) -> int:
        if r <= 0:
            return 0
        if r >= world:
            return len(cum) - 1
        target = cum[-1] * r / world
        hi = int(np.searchsorted(cum, target, side="left"))  # first boundary at or past the target
        return hi if hi == 0 or cum[hi] - target < target - cum[hi - 1] else hi - 1

    lo, hi = boundary(rank), boundary(rank + 1)
    return range(lo, max(lo, hi))
