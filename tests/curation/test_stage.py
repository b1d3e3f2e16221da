"""The curate stage on a tiny pool: outputs keyed by what was ingested, completeness, hostile inputs."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dinoflow.config import ConfigError, load_config
from dinoflow.curation import pipeline as cp
from dinoflow.data.curated import INCOMPLETE, verify_curated
from dinoflow.data.decode import CorruptImage, decode_image, pixel_hash, resize_max_side
from dinoflow.data.shards import iter_shard, list_shards, write_shard
from dinoflow.errors import DinoflowError

from .conftest import shape_image, tiny_cfg


def _manifest(out: Path) -> dict:
    return pq.read_table(out / "curated/manifest.parquet").to_pydict()


def _shard_pixels_match_sources(out: Path, pool: Path) -> int:
    """Every shard sample holds the pixels of the file its uid names (decoded, resized as curate does)."""
    n = 0
    for url in list_shards(out / "curated"):
        for s in iter_shard(url):
            want = resize_max_side(decode_image((pool / s.meta["uid"]).read_bytes()), 16)
            got = decode_image(s.data)
            assert np.array_equal(np.asarray(got), np.asarray(want)), s.meta["uid"]
            n += 1
    return n


def test_tiny_pool_end_to_end(pool, tmp_path):
    out = tmp_path / "a"
    summary = cp.curate(tiny_cfg(pool, out))
    man = _manifest(out)
    assert sorted(man["uid"]) == sorted(p.name for p in pool.iterdir())
    status = dict(zip(man["uid"], man["status"]))
    assert [status[f"zcopy_{j}.png"] for j in range(3)] == ["exact_dup"] * 3
    dup_of = dict(zip(man["uid"], man["duplicate_of"]))
    assert dup_of["zcopy_1.png"] == "img_001.png"
    record = verify_curated(out / "curated", deep=True)
    report = json.loads((out / "reports/curation.json").read_text())
    assert [s["name"] for s in record["shards"]] == report["shards"] and len(report["shards"]) == summary["n_shards"]
    assert sum(s["samples"] for s in record["shards"]) == summary["kept"]
    assert _shard_pixels_match_sources(out, pool) == summary["kept"]
    assert not (out / "curated" / INCOMPLETE).exists()
    assert "ground_truth" not in report  # scoring planted truth is the demo's business
    assert [f["step"] for f in report["funnel"]] == [
        "input",
        "corrupt",
        "junk",
        "exact_dup",
        "near_dup",
        "eval_contamination",
        "not_retrieved",
        "not_sampled",
    ]
    # one name, one meaning: `remaining` is what is left after a step (manifest.json and the
    # report's funnel agree), `dropped` what a step removed, `kept` what reached the shards
    assert "counts" not in record and "counts" not in report
    assert record["remaining"] == {f["step"]: f["remaining"] for f in report["funnel"]}
    statuses = {s: man["status"].count(s) for s in set(man["status"])}
    assert report["kept"] == statuses.pop("kept") == record["remaining"]["not_sampled"]
    assert report["dropped"] == {k: statuses.get(k, 0) for k in report["dropped"]} and sum(statuses.values()) > 0
    steps = [record["remaining"][f["step"]] for f in report["funnel"]]  # the JSON's keys are sorted
    assert [a - b for a, b in zip(steps, steps[1:])] == [report["dropped"][f["step"]] for f in report["funnel"][1:]]
    again = cp.curate(tiny_cfg(pool, out))
    assert again["shards_reused"] == again["n_shards"] and again["embedding_shards"]["partitions_computed"] == 0


def test_pool_changed_between_ingest_and_shard_writing_never_gives_wrong_pixels(pool, tmp_path, monkeypatch):
    """Issue 14 item 2: shards come from the records ingested (uid + content hash), never by position."""
    out = tmp_path / "a"
    real = cp.write_outputs

    def change_pool_then_write(run, rows, plan):
        shape_image(500).save(pool / "img_005.png")  # rewritten after ingest
        (pool / "img_007.png").unlink()  # deleted after ingest
        shape_image(501).save(pool / "img_000b.png")  # added: sorts before the others
        return real(run, rows, plan)

    monkeypatch.setattr(cp, "write_outputs", change_pool_then_write)
    with pytest.raises(
        DinoflowError, match=r"img_00[57]\.png.*(changed \(its content hash differs\)|is gone) since curate ingested it"
    ):
        cp.curate(tiny_cfg(pool, out))
    monkeypatch.setattr(cp, "write_outputs", real)
    with pytest.raises(DinoflowError, match="incomplete curated directory"):
        verify_curated(out / "curated")  # whatever shards exist are not trusted
    cp.curate(tiny_cfg(pool, out))  # the rerun lists and ingests the pool as it is now
    man = _manifest(out)
    assert "img_007.png" not in man["uid"] and "img_000b.png" in man["uid"]
    assert _shard_pixels_match_sources(out, pool) == man["status"].count("kept")
    verify_curated(out / "curated", deep=True)


def test_in_place_change_with_same_size_and_mtime_is_reingested_on_the_next_run(pool, tmp_path):
    out = tmp_path / "a"
    first = cp.curate(tiny_cfg(pool, out))
    victim = pool / "img_004.png"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    other = io.BytesIO()
    shape_image(404).save(other, "PNG")
    new = other.getvalue()
    if len(new) != len(data):  # keep the size: the partition's key (size, mtime) cannot see the change
        new = (new + b"\0" * len(data))[: len(data)] if len(new) < len(data) else data[:-8] + b"12345678"
    victim.write_bytes(bytes(new))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -r` does
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = cp.curate(tiny_cfg(pool, out))  # the content fingerprint differs: that partition is ingested again
    parts = first["embedding_shards"]["partitions_computed"]
    assert again["embedding_shards"] == {"partitions_computed": 1, "partitions_reused": parts - 1}
    man = _manifest(out)
    row = man["uid"].index("img_004.png")
    try:  # the manifest describes the new content, not the stale rows
        assert man["pixel_hash"][row] == pixel_hash(decode_image(bytes(new)))
    except CorruptImage:
        assert man["status"][row] == "corrupt"
    assert _shard_pixels_match_sources(out, pool) == man["status"].count("kept")


def test_killed_shard_writing_leaves_a_directory_training_refuses(pool, tmp_path, monkeypatch):
    """Issue 14 item 7: a curated dir without its completeness record is refused by the training reader."""
    from dinoflow.curation import writer
    from dinoflow.train.data import discover_units

    out = tmp_path / "a"
    cp.curate(tiny_cfg(pool, out))  # a complete earlier run: its manifest must not survive the next one
    calls = {"n": 0}
    real = writer._write_one

    def die_on_second(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(writer, "_write_one", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        cp.curate(tiny_cfg(pool, out, "curate.max_side=12"))  # new shards are needed
    left = sorted(p.name for p in (out / "curated").iterdir())
    assert "manifest.json" not in left and "manifest.parquet" not in left and INCOMPLETE in left
    with pytest.raises(DinoflowError, match="incomplete curated directory"):
        discover_units(str(out / "curated"))


def test_verify_curated_checks_every_shard(pool, tmp_path):
    out = tmp_path / "a"
    cp.curate(tiny_cfg(pool, out))
    d = out / "curated"
    shards = sorted(d.glob("shards-*.tar"))
    assert verify_curated(d)["format"] == 1
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[:-512])
    with pytest.raises(DinoflowError, match="has .* bytes, the manifest says"):
        verify_curated(d)
    shards[0].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    verify_curated(d)  # same size: only the deep check reads the bytes
    with pytest.raises(DinoflowError, match="sha256"):
        verify_curated(d, deep=True)
    shards[0].write_bytes(data)
    write_shard(d / "shards-000099.tar", [("k", b"x", "png", {})])
    with pytest.raises(DinoflowError, match="shards-000099.tar is not in the manifest"):
        verify_curated(d)
    (d / "shards-000099.tar").unlink()
    shards[-1].unlink()
    with pytest.raises(DinoflowError, match="is missing"):
        verify_curated(d)
    plain = tmp_path / "plain"
    write_shard(plain / "s-000000.tar", [("k", b"x", "png", {})])
    assert verify_curated(plain) is None  # shards curate never wrote: nothing to check


def test_hostile_files_in_the_pool_are_reported_corrupt(pool, tmp_path):
    """Issue 14 items 5 and 6: FIFO, dangling symlink and symlink loop → corrupt rows; nothing blocks."""
    os.mkfifo(pool / "fifo.png")
    (pool / "dangling.png").symlink_to(pool / "gone.png")
    (pool / "loop.png").symlink_to(pool / "loop.png")
    (pool / ".hidden.png").write_bytes(b"x")
    (pool / "notes.txt").write_text("not an image")
    (pool / "bad.tar").write_bytes(b"garbage" * 100)
    (tmp_path / "elsewhere").mkdir()
    shape_image(77).save(tmp_path / "elsewhere/linked.png")
    (pool / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = tmp_path / "a"
    cp.curate(tiny_cfg(pool, out))
    man = _manifest(out)
    detail = {u: (s, d) for u, s, d in zip(man["uid"], man["status"], man["detail"])}
    assert detail["fifo.png"] == ("corrupt", "unreadable: not a regular file (fifo)")
    assert detail["dangling.png"] == ("corrupt", "unreadable: dangling symlink")
    assert detail["loop.png"] == ("corrupt", "unreadable: symlink loop")
    assert detail["linked_dir/linked.png"][0] == "kept"  # a symlinked folder is read
    report = json.loads((out / "reports/curation.json").read_text())
    skipped = {d["path"]: d["reason"] for d in report["skipped_reasons"]}
    assert sorted(report["skipped_files"]) == sorted(skipped)
    assert skipped[".hidden.png"].startswith("hidden") and skipped["notes.txt"] == "not an image or .tar"
    assert skipped["bad.tar"] == "not a readable tar shard"


def test_non_utf8_file_names_are_stored_escaped(pool, tmp_path):
    """Issue 14 item 7: a name that is not UTF-8 is a row with an escaped uid, and the shards carry it."""
    with open(os.fsencode(str(pool)) + b"/bad\xff.png", "wb") as f:
        shape_image(300).save(f, "PNG")
    out = tmp_path / "a"
    cp.curate(tiny_cfg(pool, out))
    man = _manifest(out)
    assert "bad\\xff.png" in man["uid"] and man["status"][man["uid"].index("bad\\xff.png")] == "kept"
    metas = [s.meta["uid"] for url in list_shards(out / "curated") for s in iter_shard(url)]
    assert "bad\\xff.png" in metas
    verify_curated(out / "curated", deep=True)


def test_inputs_are_checked_before_any_work(pool, tmp_path):
    """Issue 14 item 8: a missing seeds path fails at once, naming the key; nothing is written."""
    out = tmp_path / "a"
    cfg = tiny_cfg(pool, out, f"curate.seeds={tmp_path}/no-seeds", "curate.retrieval=cluster")
    with pytest.raises(DinoflowError, match=r"curate.seeds = '.*no-seeds' does not exist"):
        cp.curate(cfg)
    with pytest.raises(DinoflowError, match=r"curate.eval_sets\[0\]"):
        cp.curate(tiny_cfg(pool, out, f"curate.eval_sets=[{tmp_path}/no-eval]"))
    with pytest.raises(DinoflowError, match="curate.seeds is empty"):
        cp.curate(tiny_cfg(pool, out, "curate.retrieval=sample"))
    assert not out.exists()


@pytest.mark.parametrize(
    "override,key",
    [
        ("curate.kmeans_levels=[0,-3]", "curate.kmeans_levels"),
        ("curate.kmeans_sample_sizes=[5]", "curate.kmeans_sample_sizes"),
        ("curate.retrieval_cap_per_cluster=0", "curate.retrieval_cap_per_cluster"),
    ],
)
def test_bad_curation_settings_are_refused_at_load(override, key):
    """Issue 14 item 7: `kmeans_levels=[0,-3]` used to run with one cluster."""
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config(None, [override])
