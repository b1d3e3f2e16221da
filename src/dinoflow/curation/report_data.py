"""What the curation report shows, streamed from the per-partition manifest parts (rank 0).

Counts per status and drop reason, level-0 cluster sizes (all rows and kept rows), similarity
histograms on fixed bins, and a few thumbnails (members of the largest clusters, near-duplicate
pairs) read back from where their partitions recorded them. Memory follows the number of
clusters and thumbnails, not the pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dinoflow.curation.ingest import decode_item, load_partition
from dinoflow.curation.manifest import read_part
from dinoflow.curation.partitions import Partition
from dinoflow.curation.rows import SIMILARITY_COLUMNS
from dinoflow.data.shards import iter_shard
from dinoflow.data.sources import Entry, read_entry_bytes
from dinoflow.data.statuses import STATUSES

HIST_EDGES = np.linspace(-1.0, 1.0, 401)
DETAILED = ("corrupt", "junk")
LARGEST_CLUSTERS = 8


@dataclass
class Summary:
    counts: dict[str, int]
    details: dict[str, dict[str, int]]
    level0_sizes: np.ndarray
    level0_kept: np.ndarray
    hists: dict[str, np.ndarray]
    cluster_thumbs: list[tuple[str, list]] = field(default_factory=list)
    pair_thumbs: list[tuple[str, list]] = field(default_factory=list)


def _count(work: Path, n_parts: int, levels: int) -> Summary:
    counts = {s: 0 for s in STATUSES}
    details: dict[str, dict[str, int]] = {}
    sizes, kept = np.zeros(0, np.int64), np.zeros(0, np.int64)
    hists = {k: np.zeros(len(HIST_EDGES) - 1, np.int64) for k in SIMILARITY_COLUMNS}
    cols = ["status", "detail", *SIMILARITY_COLUMNS] + (["cluster_l0"] if levels else [])
    for p in range(n_parts):
        t = read_part(work, p, cols).to_pydict()
        for s, d in zip(t["status"], t["detail"]):
            counts[s] += 1
            if s in DETAILED:
                key = d.split(":")[0]
                details.setdefault(s, {}).setdefault(key, 0)
                details[s][key] += 1
        for k in SIMILARITY_COLUMNS:
            v = np.asarray(t[k], np.float64)
            hists[k] += np.histogram(v[np.isfinite(v)], bins=HIST_EDGES)[0]
        if levels:
            l0 = np.asarray(t["cluster_l0"], np.int64)
            is_kept = np.asarray(t["status"]) == "kept"
            k0 = max(len(sizes), int(l0.max()) + 1 if len(l0) else 0)
            sizes = np.pad(sizes, (0, k0 - len(sizes))) + np.bincount(l0[l0 >= 0], minlength=k0)
            kept = np.pad(kept, (0, k0 - len(kept))) + np.bincount(l0[(l0 >= 0) & is_kept], minlength=k0)
    return Summary(counts, details, sizes, kept, hists)


def _image(parts: list[Partition], work: Path, p: int, i: int):
    rec = load_partition(work, parts[p], embeddings=False)[0].slice(i, 1).to_pydict()
    ref, member = os.fsdecode(rec["ref"][0]), rec["member"][0]
    if member:
        data = next((s.data for s in iter_shard(ref) if os.fsencode(s.key) == member), b"")
    else:  # bounded like every read of a pool file: a thumbnail is not worth a gigabyte
        data = read_entry_bytes(Entry(ref, "image", ref))[0]
    return decode_item(data, None, 64_000_000)[0]


def _thumbs(s: Summary, work: Path, parts: list[Partition], levels: int, n: int) -> None:
    """Fill the cluster rows (n kept members of each of the largest clusters) and the near-dup pairs."""
    order = sorted(range(len(s.level0_kept)), key=lambda c: (-int(s.level0_kept[c]), c))
    big = [c for c in order[:LARGEST_CLUSTERS] if s.level0_kept[c] > 0] if levels else []
    members: dict[int, list] = {c: [] for c in big}
    pairs: list[tuple[str, str, tuple[int, int]]] = []
    for p in range(len(parts)):
        if all(len(v) >= n for v in members.values()) and len(pairs) >= n:
            break
        t = read_part(work, p, ["uid", "status", "duplicate_of"] + (["cluster_l0"] if levels else [])).to_pydict()
        for i, st in enumerate(t["status"]):
            c = t["cluster_l0"][i] if levels else -1
            if st == "kept" and c in members and len(members[c]) < n:
                members[c].append((p, i))
            elif st == "near_dup" and len(pairs) < n:
                pairs.append((t["uid"][i], t["duplicate_of"][i], (p, i)))
    s.cluster_thumbs = [
        (f"cluster {c} ({int(s.level0_kept[c])} kept)", [_image(parts, work, p, i) for p, i in members[c]]) for c in big
    ]
    where: dict[str, tuple[int, int]] = {}
    wanted = {b for _, b, _ in pairs}
    for p in range(len(parts)):
        if wanted <= set(where):
            break
        for i, u in enumerate(read_part(work, p, ["uid"]).column("uid").to_pylist()):
            if u in wanted:
                where[u] = (p, i)
    s.pair_thumbs = [
        (f"{a} ~ {b}", [_image(parts, work, *where[b]), _image(parts, work, *loc)]) for a, b, loc in pairs if b in where
    ]


def summarize(work: Path, parts: list[Partition], levels: int, report_images: int) -> Summary:
    """Stream the manifest parts of `parts` into a `Summary` (thumbnails only when report_images > 0)."""
    s = _count(work, len(parts), levels)
    if report_images > 0:
        _thumbs(s, work, parts, levels, report_images)
    return s
