"""This rank's rows of the pool during the global steps: the partitions it embedded, in gid order.

Every row has a global id (gid: its position in source order over all partitions), a status
(`kept` until a step drops it, with the reason) and the columns the manifest reports. A rank
holds only its own partitions' rows and embeddings; a step that needs other ranks' rows talks to
them through `comm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dinoflow.curation.ingest import load_partition, partition_row_count
from dinoflow.curation.partitions import Plan, rank_partitions
from dinoflow.data.statuses import KEPT, PARTITION_OK, STATUSES
from dinoflow.distributed.comm import Comm

CODE = {s: i for i, s in enumerate(STATUSES)}
SIMILARITY_COLUMNS = ("seed_similarity", "nn_similarity", "eval_similarity")


@dataclass
class Rows:
    """Columns of this rank's rows, [n] each; `emb` [n, D] (zeros for rows that were never embedded)."""

    parts: list[int]  # partition indices held, ascending
    part_rows: np.ndarray  # rows in each held partition
    gid: np.ndarray
    uid: list[str]
    status: np.ndarray  # int8 code into STATUSES
    detail: np.ndarray  # object (str)
    pixel_hash: list[str]
    emb: np.ndarray
    dup_of: np.ndarray  # gid of the kept duplicate, -1
    sims: dict[str, np.ndarray] = field(default_factory=dict)
    clusters: np.ndarray | None = None  # [n, levels] int64, -1 where not clustered
    total: int = 0  # rows over all ranks
    rank_starts: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # first gid of each rank, + total

    def cluster_table(self) -> np.ndarray:
        """`clusters`, which cluster_and_sample fills in before anything reads it."""
        if self.clusters is None:
            raise RuntimeError("the rows were read before cluster_and_sample gave them their clusters")
        return self.clusters

    def owner(self, gid: np.ndarray) -> np.ndarray:
        """The rank holding each gid: [m] int64."""
        return np.searchsorted(self.rank_starts, gid, side="right") - 1

    @property
    def alive(self) -> np.ndarray:
        return self.status == CODE[KEPT]

    def drop(self, mask: np.ndarray, status: str, detail: np.ndarray | str | None = None) -> None:
        """Give the kept rows in `mask` a drop status (a row keeps the first reason it was dropped for)."""
        m = mask & self.alive
        self.status[m] = CODE[status]
        if detail is not None:
            self.detail[m] = detail[m] if isinstance(detail, np.ndarray) else detail


def hash128(hexes: list[str]) -> np.ndarray:
    """The first 128 bits of hex sha256 digests as two int64 columns ([n, 2]; zeros for "")."""
    out = np.zeros((len(hexes), 2), np.int64)
    for i, h in enumerate(hexes):
        if h:
            out[i] = np.frombuffer(bytes.fromhex(h[:32]), dtype=">i8")
    return out


def partition_rows(comm: Comm, plan: Plan, work: Path) -> np.ndarray:
    """Rows of every finished partition of `plan` [n_parts] int64 (each rank reads a share of the footers)."""
    counts = np.zeros(len(plan.partitions), np.int64)
    for i in range(comm.rank, len(plan.partitions), comm.world):
        counts[i] = partition_row_count(work, plan.partitions[i])
    return comm.all_reduce_sum(counts)


def load_rows(comm: Comm, plan: Plan, work: Path, dim: int) -> Rows:
    """Load this rank's partitions of `plan` (finished in `work`) and number every row globally."""
    all_counts = partition_rows(comm, plan, work)
    block = rank_partitions(all_counts, comm.rank, comm.world)
    mine = list(block)
    tables, embs = [], []
    for i in mine:
        t, e = load_partition(work, plan.partitions[i])
        tables.append(t)
        embs.append(np.asarray(e))
    counts = all_counts[block.start : block.stop]
    start = int(all_counts[: block.start].sum())  # ranks hold consecutive blocks: rank order = partition order
    n = int(counts.sum())
    col = {k: [v for t in tables for v in t.column(k).to_pylist()] for k in ("uid", "status", "detail", "pixel_hash")}
    status = np.array([CODE[KEPT] if s == PARTITION_OK else CODE[s] for s in col["status"]], np.int8)
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    return Rows(
        parts=mine,
        part_rows=counts,
        gid=np.arange(start, start + n, dtype=np.int64),
        uid=col["uid"],
        status=status,
        detail=np.array(col["detail"], dtype=object) if n else np.zeros(0, object),
        pixel_hash=col["pixel_hash"],
        emb=np.ascontiguousarray(emb, dtype=np.float32),
        dup_of=np.full(n, -1, np.int64),
        sims={k: np.full(n, np.nan, np.float32) for k in SIMILARITY_COLUMNS},
        total=int(all_counts.sum()),
        rank_starts=np.array(comm.all_gather_int(start) + [int(all_counts.sum())], np.int64),
    )


def load_reference(plan: Plan, work: Path) -> tuple[np.ndarray, list[str]]:
    """Every decodable row of a reference set (seeds, an eval set), on every rank: ([M, D], uids)."""
    xs, uids = [], []
    for part in plan.partitions:
        t, e = load_partition(work, part)
        ok = np.array([s == PARTITION_OK for s in t.column("status").to_pylist()], bool)
        xs.append(np.asarray(e)[ok])
        uids += [u for u, k in zip(t.column("uid").to_pylist(), ok) if k]
    if not xs:
        return np.zeros((0, 1), np.float32), []
    return np.ascontiguousarray(np.concatenate(xs), dtype=np.float32), uids
