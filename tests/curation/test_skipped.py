"""Skipped lists live in JSON-lines files of any size, never in Parquet metadata (whose footer a
reader refuses past 100 MB: `Couldn't deserialize thrift`)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from dinoflow.curation.ingest import COLUMNS, Notes, load_partition, part_paths, write_partition
from dinoflow.curation.partitions import Partition
from dinoflow.curation.skipped import REPORTED, TABLE, write_skipped
from dinoflow.data.sources import Entry

REASON = "repeated member name in the shard: the first one is kept"


def test_a_130_mb_skipped_list_is_written_and_read_back(tmp_path):
    # 120k repeated members with 1,000-character names: ~130 MB of list, past what a footer may hold
    n, name = 120_000, "n" * 1000
    part = Partition("pool", 0, "src", "", [Entry("many.tar", "tar", str(tmp_path / "many.tar"))], key="k" * 64)
    notes = Notes([{"path": f"many.tar/{name}{i:07d}.png", "reason": REASON} for i in range(n)], ["0" * 64])
    work, out = tmp_path / "work", tmp_path / "out"
    write_partition(work, part, {k: [] for k in COLUMNS}, np.zeros((0, 4), np.float32), notes)
    del notes
    table, emb = load_partition(work, part)  # the footer holds no list: it reads back
    assert table.num_rows == 0 and emb.shape == (0, 4)
    footer = pq.read_metadata(part_paths(work, part)[0])
    assert footer.serialized_size < 64 * 1024
    out.mkdir()
    got = write_skipped(out, [{"source": "src", "path": "readme.md", "reason": "not an image or .tar"}], work, [part])
    assert got["entries"] == n + 1 and len(got["first"]) == REPORTED
    assert got["first"][0]["path"] == "readme.md" and got["first"][1]["path"] == f"many.tar/{name}0000000.png"
    with open(out / TABLE, encoding="utf-8") as f:
        count, last = 0, None
        for line in f:
            count, last = count + 1, line
    assert count == n + 1
    assert json.loads(last) == {"source": "src", "path": f"many.tar/{name}{n - 1:07d}.png", "reason": REASON}
