"""Hostile pools through the whole curate stage: tars that attack the shard reader, files over the
byte limit, pools with nothing usable, outputs that cannot be written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hostile.peak import run_measured
from hostile.tars import GIB, padded_png, repeated_names_tar, sparse_bomb_tar

from dinoflow.curation import pipeline as cp
from dinoflow.data.curated import INCOMPLETE, verify_curated
from dinoflow.data.decode import decode_image, resize_max_side
from dinoflow.data.shards import iter_shard, list_shards
from dinoflow.errors import DinoflowError, StorageError

from .conftest import shape_image, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
# Peak RSS of a fresh process that imports torch and curates the tiny pool with the hostile inputs
# in it. Before the limits, the 1 GiB "PNG" alone took 2.4 GB and the sparse member 3.4 GB.
CURATE_PEAK_LIMIT_MIB = 1024


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    shape_image(i).save(buf, "PNG")
    return buf.getvalue()


def _rows(out: Path) -> dict[str, tuple[str, str]]:
    t = pq.read_table(out / "curated/manifest.parquet").to_pydict()
    return {u: (s, d) for u, s, d in zip(t["uid"], t["status"], t["detail"])}


def _skipped(out: Path) -> dict[str, str]:
    lines = (out / "curated/skipped.jsonl").read_text().splitlines()
    return {d["path"]: d["reason"] for d in map(json.loads, lines)}


def test_repeated_member_names_keep_the_first_and_curation_completes(pool, tmp_path):
    pngs = [_png(200 + i) for i in range(5)]
    (pool / "dup.tar").write_bytes(repeated_names_tar(pngs))
    out = tmp_path / "a"
    cp.curate(tiny_cfg(pool, out))
    rows = _rows(out)
    assert [u for u in rows if u.startswith("dup.tar/")] == ["dup.tar/a", "dup.tar/b", "dup.tar/c"]
    skipped = _skipped(out)
    assert skipped["dup.tar/a.png"].startswith("repeated member name")
    assert skipped["dup.tar/c.png"].startswith("repeated member name")
    assert "must be consecutive" in skipped["dup.tar/a.json"]
    verify_curated(out / "curated", deep=True)
    shard = {s.meta["uid"]: s.data for url in list_shards(out / "curated") for s in iter_shard(url)}
    want = resize_max_side(decode_image(pngs[0]), 16)  # the first a.png, not the repeat
    assert np.array_equal(np.asarray(decode_image(shard["dup.tar/a"])), np.asarray(want))
    again = cp.curate(tiny_cfg(pool, out))  # and again: nothing is "gone since curate ingested it"
    assert again["embedding_shards"]["partitions_computed"] == 0


def test_sparse_member_and_a_1_gib_png_are_corrupt_with_reasons_in_bounded_memory(pool, tmp_path):
    (pool / "bomb.tar").write_bytes(sparse_bomb_tar(_png(300), claimed=3 * GIB))
    padded_png(pool / "huge.png", _png(301), size=GIB)
    out = tmp_path / "a"
    _, peak = run_measured(
        f"""
        import sys
        sys.path[:0] = [{str(REPO / "src")!r}, {str(REPO)!r}]
        from pathlib import Path
        from dinoflow.curation import pipeline as cp
        from tests.curation.conftest import tiny_cfg
        cp.curate(tiny_cfg(Path({str(pool)!r}), Path({str(out)!r})))
        RESULT = None
        """
    )
    assert peak < CURATE_PEAK_LIMIT_MIB, peak
    rows = _rows(out)
    assert rows["huge.png"][0] == "corrupt" and rows["huge.png"][1].startswith(f"too_large: the file is {GIB} bytes")
    assert rows["bomb.tar/bomb"][0] == "corrupt" and "is sparse" in rows["bomb.tar/bomb"][1]
    assert rows["bomb.tar/000001"][0] in ("kept", "exact_dup", "near_dup")  # the good members are read
    report = json.loads((out / "reports/curation.json").read_text())
    assert report["dropped"]["corrupt"] >= 2


def test_the_byte_limit_is_a_setting(pool, tmp_path):
    out = tmp_path / "a"
    small = min(len(_png(i)) for i in range(30))
    cp.curate(tiny_cfg(pool, out, f"curate.max_file_bytes={small}"))
    rows = _rows(out)
    over = [u for u, (s, d) in rows.items() if d.startswith("too_large:")]
    assert over and all(rows[u][0] == "corrupt" for u in over)
    assert all((pool / u).stat().st_size > small for u in over)


def test_a_pool_with_no_decodable_image_stops_with_a_named_error_and_the_manifest(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        (pool / f"bad{i}.png").write_bytes(b"not a png %d" % i)
    out = tmp_path / "a"
    with pytest.raises(DinoflowError, match=r"no decodable image among 3 inputs \(3 could not be decoded") as e:
        cp.curate(tiny_cfg(pool, out))
    assert e.value.exit_code == 1
    assert str(out / "curated/manifest.parquet") in str(e.value)
    assert {s for s, _ in _rows(out).values()} == {"corrupt"} and len(_rows(out)) == 3
    assert (out / "curated" / INCOMPLETE).exists()
    with pytest.raises(DinoflowError, match="incomplete curated directory"):
        verify_curated(out / "curated")  # training refuses it


def test_a_pool_with_no_image_file_at_all_is_a_named_error(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "notes.txt").write_text("x")
    with pytest.raises(DinoflowError, match="hold no image file .* listed in .*skipped.jsonl"):
        cp.curate(tiny_cfg(pool, tmp_path / "a"))
    assert _skipped(tmp_path / "a") == {"notes.txt": "not an image or .tar"}
    assert not (tmp_path / "a/curated/manifest.parquet").exists()  # no input, no rows


@pytest.mark.parametrize(
    "out_dir,why",
    [
        ("/dev/null/x", "/dev/null in its path is not a folder"),
        ("/proc/dinoflow-out", "/proc is on a virtual file system"),
    ],
)
def test_an_output_folder_that_cannot_be_written_is_named_before_any_work(pool, tmp_path, out_dir, why):
    cfg = tiny_cfg(pool, tmp_path / "a", f"curate.out_dir={out_dir}")
    with pytest.raises(StorageError, match=f"curate.out_dir = '{out_dir}' cannot be written: {why}") as e:
        cp.curate(cfg)
    assert "no space" not in str(e.value)
    assert not (tmp_path / "a").exists()
