"""iter_source over image folders, tar shards and s3:// prefixes: uids, order, skipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinoflow.data import s3
from dinoflow.data.shards import write_shard
from dinoflow.data.sources import SourceStats, iter_source, iter_source_batches, iter_sources
from dinoflow.errors import DinoflowError


def touch(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    files = {
        "b.png": b"b",
        "a.JPG": b"a",
        "sub/z/c.webp": b"c",
        "sub/d.tiff": b"d",
        "sub/e.bmp": b"e",
        "sub/f.jpeg": b"f",
        "sub/g.tif": b"g",
        "notes.txt": b"skip me",
        ".hidden.png": b"hidden",
        ".cache/x.png": b"hidden dir",
        "empty.png": b"",
    }
    for rel, data in files.items():
        touch(root / rel, data)
    write_shard(root / "shards/s-000000.tar", [("k1", b"t1", "png", {"label": 1}), ("k0", b"t0", "jpg", {})])
    return root


def test_folder_recursive_sorted_relative_uids(tree):
    stats = SourceStats()
    items = list(iter_source(tree, stats))
    assert [(i.uid, i.data) for i in items] == [
        ("a.JPG", b"a"),
        ("b.png", b"b"),
        ("empty.png", b""),  # yielded: the decoder reports it as corrupt ("empty")
        ("shards/s-000000.tar/k0", b"t0"),
        ("shards/s-000000.tar/k1", b"t1"),
        ("sub/d.tiff", b"d"),
        ("sub/e.bmp", b"e"),
        ("sub/f.jpeg", b"f"),
        ("sub/g.tif", b"g"),
        ("sub/z/c.webp", b"c"),
    ]
    assert {i.source for i in items} == {str(tree)}
    assert items[4].meta == {"label": 1}
    assert stats.skipped_files == ["notes.txt"] and stats.items == 10
    assert [i.uid for i in iter_source(str(tree))] == [i.uid for i in items]  # deterministic


def test_single_files(tree):
    assert [(i.uid, i.data) for i in iter_source(tree / "sub/d.tiff")] == [("d.tiff", b"d")]
    assert [i.uid for i in iter_source(tree / "shards/s-000000.tar")] == ["s-000000.tar/k0", "s-000000.tar/k1"]
    with pytest.raises(DinoflowError, match="neither an image"):
        list(iter_source(tree / "notes.txt"))
    with pytest.raises(DinoflowError, match="does not exist"):
        list(iter_source(tree / "missing"))


def test_dir_of_shards(tmp_path):
    for s in range(2):
        write_shard(tmp_path / f"shards-{s:06d}.tar", [(f"{s}{k}", f"{s}{k}".encode(), "png", {}) for k in range(2)])
    assert [i.uid for i in iter_source(tmp_path)] == [
        "shards-000000.tar/00",
        "shards-000000.tar/01",
        "shards-000001.tar/10",
        "shards-000001.tar/11",
    ]


def test_malformed_shard_is_counted_not_raised(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"garbage" * 100)
    touch(tmp_path / "ok.png", b"x")
    stats = SourceStats()
    assert [i.uid for i in iter_source(tmp_path, stats)] == ["ok.png"]
    assert stats.shards.unreadable_shards == 1


def test_batches_and_multiple_sources(tree, tmp_path):
    other = tmp_path / "other"
    touch(other / "o.png", b"o")
    batches = list(iter_source_batches(tree, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    both = list(iter_source_batches([tree, other], 100))
    assert len(both) == 1 and both[0][-1].uid == "o.png" and both[0][-1].source == str(other)
    assert len(list(iter_sources([tree, other]))) == 11
    with pytest.raises(ValueError):
        list(iter_source_batches(tree, 0))


def test_s3_prefix_images_and_shards(tmp_path, bucket):
    shard = write_shard(tmp_path / "s.tar", [("k", b"shard-img", "png", {"a": 1})])
    objects = {
        "pool/b.png": b"b",
        "pool/a/c.jpg": b"c",
        "pool/readme.md": b"skip",
        "pool/shards/s.tar": shard.read_bytes(),
        "poolx/not-in-prefix.png": b"no",
    }
    for key, data in objects.items():
        s3.write_bytes(f"s3://{bucket}/{key}", data)
    stats = SourceStats()
    items = list(iter_source(f"s3://{bucket}/pool", stats))  # no trailing slash: still the folder only
    assert [(i.uid, i.data) for i in items] == [("a/c.jpg", b"c"), ("b.png", b"b"), ("shards/s.tar/k", b"shard-img")]
    assert items[2].meta == {"a": 1}
    assert stats.skipped_files == ["readme.md"]
    assert [i.uid for i in iter_source(f"s3://{bucket}/pool/b.png")] == ["b.png"]  # a single object
    assert len(list(iter_source(f"s3://{bucket}"))) == 4  # whole bucket


def test_s3_missing_bucket(s3_env):
    with pytest.raises(DinoflowError, match="does not exist"):
        list(iter_source("s3://missing-bucket/pool/"))
