"""Tar shards: round trip, byte determinism, atomicity, malformed members, local and S3 listing."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoflow.data import s3
from dinoflow.data.shards import ShardStats, ShardWriter, iter_shard, list_shards, write_shard
from dinoflow.errors import DinoflowError


def png(seed: int, side: int = 8) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def make_samples(n: int) -> list[tuple[str, bytes, str, dict]]:
    return [
        (f"{i:06d}", png(i), "jpg" if i % 3 == 2 else "png", {"uid": f"pool/img_{i}.png", "i": i}) for i in range(n)
    ]


def write_all(out: Path, samples, shard_size: int = 3) -> list[Path]:
    with ShardWriter(out, shard_size) as w:
        for s in samples:
            w.write(*s)
    return w.paths


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar built by hand; a None payload makes a directory member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------- writing


def test_round_trip(tmp_path):
    samples = make_samples(7)
    paths = write_all(tmp_path, samples)
    assert [p.name for p in paths] == ["shards-000000.tar", "shards-000001.tar", "shards-000002.tar"]
    assert list_shards(tmp_path) == [str(p) for p in paths]
    stats = ShardStats()
    got = [s for p in list_shards(tmp_path) for s in iter_shard(p, stats)]
    assert [(s.key, s.data, s.ext, s.meta) for s in got] == samples
    assert [len(list(iter_shard(p))) for p in paths] == [3, 3, 1]
    assert stats.samples == 7 and stats.problems == 0
    assert got[0].shard == str(paths[0])


def test_members_are_key_ext_pairs_with_fixed_headers(tmp_path):
    path = write_shard(tmp_path / "x.tar", [("b", b"BB", "png", {"z": 1, "a": 2}), ("a", b"A", "jpg", {})])
    with tarfile.open(path) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["a.jpg", "a.json", "b.png", "b.json"]  # sorted by key
        assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0o644, 0, 0, "", "")}
        assert tf.extractfile("b.json").read() == b'{"a":2,"z":1}'  # canonical JSON


def test_same_input_gives_byte_identical_shards(tmp_path):
    samples = make_samples(8)
    a = write_all(tmp_path / "a", samples, 4)
    # same samples, shuffled inside each shard: members are sorted, so bytes still match
    shuffled = samples[:4][::-1] + [samples[5], samples[4], samples[7], samples[6]]
    b = write_all(tmp_path / "b", shuffled, 4)
    assert [sha(p) for p in a] == [sha(p) for p in b]
    changed = list(samples)
    changed[5] = (changed[5][0], changed[5][1], changed[5][2], {"uid": "other"})
    c = write_all(tmp_path / "c", changed, 4)
    assert sha(c[0]) == sha(a[0]) and sha(c[1]) != sha(a[1])


def test_exception_mid_shard_leaves_no_partial_file(tmp_path):
    samples = make_samples(5)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, 3) as w:
            for i, s in enumerate(samples):
                if i == 4:
                    raise RuntimeError("boom")
                w.write(*s)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards-000000.tar"]  # the whole first shard only
    assert [s.key for s in iter_shard(tmp_path / "shards-000000.tar")] == ["000000", "000001", "000002"]


def test_failure_while_writing_a_shard_leaves_nothing(tmp_path):
    bad = [("a", b"x", "png", {}), ("b", b"y", "png", {"f": object()})]  # not JSON-serialisable
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        write_shard(tmp_path / "s.tar", bad)
    assert list(tmp_path.iterdir()) == []


def test_numpy_metadata_is_serialised(tmp_path):
    p = write_shard(tmp_path / "s.tar", [("a", b"x", "png", {"sim": np.float32(0.5), "c": np.int64(3)})])
    assert next(iter_shard(p)).meta == {"sim": 0.5, "c": 3}


def test_stale_shards_of_a_longer_run_are_removed(tmp_path):
    write_all(tmp_path, make_samples(10), 2)  # 5 shards
    (tmp_path / "other-000009.tar").write_bytes(b"not ours")
    write_all(tmp_path, make_samples(3), 2)  # 2 shards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-000009.tar", "shards-000000.tar", "shards-000001.tar"]


def test_resume_numbering_with_start_index(tmp_path):
    write_all(tmp_path, make_samples(4), 2)
    with ShardWriter(tmp_path, 2, start_index=2) as w:
        w.write("000100", png(100), "png", {})
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "shards-000002.tar"
    assert sum(1 for p in list_shards(tmp_path) for _ in iter_shard(p)) == 5


@pytest.mark.parametrize("key", ["", "a.b", "/abs", "a b", "x/", "a//b"])
def test_bad_keys_are_refused(tmp_path, key):
    with ShardWriter(tmp_path, 2) as w, pytest.raises(ValueError):
        w.write(key, b"x", "png", {})


def test_duplicate_key_and_bad_ext_refused(tmp_path):
    with ShardWriter(tmp_path, 10) as w:
        w.write("k", b"x", "png", {})
        with pytest.raises(ValueError, match="duplicate"):
            w.write("k", b"y", "png", {})
        with pytest.raises(ValueError, match="extension"):
            w.write("k2", b"y", "gif", {})


# ---------------------------------------------------------------- reading malformed shards


def test_malformed_members_are_skipped_and_counted(tmp_path):
    p = tmp_path / "m.tar"
    p.write_bytes(
        tar_bytes(
            [
                ("dir", None),  # directory: skipped
                ("README", b"no extension"),  # skipped
                ("a.png", b"A"),
                ("a.json", b"{not json"),  # bad meta: kept with meta {}
                ("b.json", b'{"x": 1}'),  # no image: missing_data
                ("c.png", b"C1"),
                ("c.jpg", b"C2"),  # second image: extra_images
                ("c.cls", b"7"),  # extra member kept
                ("sub/d.seg.png", b"MASK"),  # key with a folder; "seg.png" is an extra, not the image
                ("sub/d.png", b"D"),
                ("sub/d.json", b"[1, 2]"),  # JSON but not an object: bad meta
            ]
        )
    )
    stats = ShardStats()
    got = list(iter_shard(p, stats))
    assert [(s.key, s.data, s.ext, s.meta) for s in got] == [
        ("a", b"A", "png", {}),
        ("c", b"C1", "png", {}),
        ("sub/d", b"D", "png", {}),
    ]
    assert got[1].extras == {"cls": b"7"} and got[2].extras == {"seg.png": b"MASK"}
    assert stats.as_dict() == {
        "samples": 2 + 1,
        "skipped_members": 2,
        "refused_members": 0,
        "repeated_members": 0,
        "bad_meta": 2,
        "missing_data": 1,
        "extra_images": 1,
        "truncated": 0,
        "unreadable_tail": 0,
        "unreadable_shards": 0,
    }


def test_truncated_shard_yields_complete_samples_then_counts(tmp_path):
    full = write_shard(
        tmp_path / "full.tar", [(f"{i:03d}", png(i, 32), "png", {"i": i}) for i in range(4)]
    ).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full[: int(len(full) * 0.6)])
    stats = ShardStats()
    keys = [s.key for s in iter_shard(cut, stats)]
    # the cut falls inside 003.png: 002 is whole (003's header ends it) and is yielded before 003 is read
    assert keys == ["000", "001", "002"]
    assert stats.truncated == 1 and stats.samples == 3


def test_corrupt_header_mid_shard_is_reported(tmp_path):
    samples = [(f"{i:03d}", b"x" * 600, "png", {}) for i in range(4)]
    data = bytearray(write_shard(tmp_path / "ok.tar", samples).read_bytes())
    # each sample = png (512 header + 1024 data) + json (512 + 512): overwrite the third sample's header
    off = 2 * (512 + 1024 + 512 + 512)
    assert data[off : off + 7] == b"002.png"
    data[off : off + 512] = b"\x7f" * 512
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    stats = ShardStats()
    assert [s.key for s in iter_shard(bad, stats)] == ["000", "001"]
    assert stats.unreadable_tail == 1
    stats_ok = ShardStats()
    assert len(list(iter_shard(tmp_path / "ok.tar", stats_ok))) == 4 and stats_ok.unreadable_tail == 0


def test_not_a_tar_is_counted_not_raised(tmp_path):
    p = tmp_path / "junk.tar"
    p.write_bytes(b"this is not a tar file" * 10)
    stats = ShardStats()
    assert list(iter_shard(p, stats)) == [] and stats.unreadable_shards == 1


def test_list_shards_local(tmp_path):
    for name in ["b.tar", "a.tar", "c.txt", "A.TAR"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [Path(p).name for p in list_shards(tmp_path)] == ["A.TAR", "a.tar", "b.tar"]
    assert list_shards(tmp_path / "a.tar") == [str(tmp_path / "a.tar")]
    with pytest.raises(DinoflowError, match="does not exist"):
        list_shards(tmp_path / "missing")
    with pytest.raises(DinoflowError, match="not a .tar"):
        list_shards(tmp_path / "c.txt")
    with pytest.raises(DinoflowError, match="does not exist"):
        list(iter_shard(tmp_path / "missing.tar"))


# ---------------------------------------------------------------- S3 (real moto server)


def test_s3_list_and_stream(tmp_path, bucket):
    samples = make_samples(5)
    paths = write_all(tmp_path, samples, 2)
    for p in paths:
        s3.write_bytes(f"s3://{bucket}/curated/{p.name}", p.read_bytes())
    s3.write_bytes(f"s3://{bucket}/curated/manifest.parquet", b"x")
    s3.write_bytes(f"s3://{bucket}/curated2/shards-000000.tar", paths[0].read_bytes())  # sibling prefix
    urls = list_shards(f"s3://{bucket}/curated/")
    assert urls == [f"s3://{bucket}/curated/{p.name}" for p in paths]
    stats = ShardStats()
    got = [s for u in urls for s in iter_shard(u, stats)]
    assert [(s.key, s.data, s.ext, s.meta) for s in got] == samples
    assert stats.samples == 5 and stats.problems == 0
    assert got[0].shard == urls[0]


def test_s3_missing_shard_is_a_clear_error(bucket):
    with pytest.raises(DinoflowError, match="not found"):
        list(iter_shard(f"s3://{bucket}/nope.tar"))


def test_s3_written_shard_reads_back_identically(tmp_path, bucket):
    p = write_all(tmp_path, make_samples(2), 2)[0]
    s3.write_bytes(f"s3://{bucket}/x/{p.name}", p.read_bytes())
    assert hashlib.sha256(s3.read_bytes(f"s3://{bucket}/x/{p.name}")).hexdigest() == sha(p)
    assert next(iter_shard(f"s3://{bucket}/x/{p.name}")).meta == make_samples(2)[0][3]
