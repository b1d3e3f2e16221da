"""`dinoflow embed`'s part store: a skipped list of any size is written and read back on resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from dinoflow.embedding.parts import PartStore, read_embeddings


def test_120k_skipped_images_with_long_names_resume_and_finish(tmp_path):
    # 120k undecodable images with 1,000-character names: ~130 MB of skipped records in one part,
    # past the 100 MB a Parquet footer may hold when read back (they used to be its metadata)
    n, name = 120_000, "n" * 1000
    skipped = [{"uid": f"many.tar/{name}{i:07d}", "reason": "not_an_image: no known image format"} for i in range(n)]
    store = PartStore(tmp_path / "x.parquet", {"format": 1})
    store.write_part(["a"], {"embedding": np.ones((1, 3), np.float32)}, skipped)
    del skipped
    part = tmp_path / "x.parquet.parts" / "part-000000.parquet"
    assert pq.read_metadata(part).serialized_size < 64 * 1024
    resumed = PartStore(tmp_path / "x.parquet", {"format": 1})  # what a rerun after a kill does
    uids, rows, skips = resumed.done()
    assert rows == 1 and len(skips) == n and len(uids) == n + 1
    assert skips[-1] == {"uid": f"many.tar/{name}{n - 1:07d}", "reason": "not_an_image: no known image format"}
    del uids, skips
    summary = resumed.finish({"dim": 3})
    assert summary["rows"] == 1 and summary["skipped"] == n
    assert read_embeddings(tmp_path / "x.parquet")[0] == ["a"]
    assert len(json.loads((tmp_path / "x.skipped.json").read_text())) == n
