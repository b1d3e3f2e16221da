"""iter_source over image folders, tar shards and s3:// prefixes: uids, order, skipped files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from dinoflow.data import s3
from dinoflow.data.shards import write_shard
from dinoflow.data.sources import SourceStats, iter_source
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
    assert (
        stats.skipped_files
        == [
            {"path": ".cache", "reason": "hidden (names starting with '.' are not inputs)"},
            {"path": ".hidden.png", "reason": "hidden (names starting with '.' are not inputs)"},
            {"path": "notes.txt", "reason": "not an image or .tar"},
        ]
        and stats.items == 10
    )
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
    assert stats.skipped_files == [{"path": "bad.tar", "reason": "not a readable tar shard"}]


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
    assert stats.skipped_files == [{"path": "readme.md", "reason": "not an image or .tar"}]
    assert [i.uid for i in iter_source(f"s3://{bucket}/pool/b.png")] == ["b.png"]  # a single object
    assert len(list(iter_source(f"s3://{bucket}"))) == 4  # whole bucket


def test_s3_missing_bucket(s3_env):
    with pytest.raises(DinoflowError, match="does not exist"):
        list(iter_source("s3://missing-bucket/pool/"))


# ---------------------------------------------------------------- hostile folders


def _run_unprivileged(fn):
    """fn() with the permissions of an ordinary user: as root, in a forked child that drops to `nobody`
    (root reads files whatever their mode); the result comes back as JSON."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def open_tmp():
    """A temp folder any user can enter (pytest's tmp_path is private to its owner)."""
    d = Path(tempfile.mkdtemp(prefix="dinoflow-sources-"))
    d.chmod(0o755)
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def test_fifo_and_special_files_are_items_with_an_error_and_never_block(tmp_path):
    touch(tmp_path / "a.png", b"a")
    os.mkfifo(tmp_path / "fifo.png")
    os.mkfifo(tmp_path / "fifo.tar")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    stats = SourceStats()
    items = {i.uid: i for i in iter_source(tmp_path, stats)}  # returns at once (a FIFO read would block forever)
    assert items["a.png"].data == b"a" and items["a.png"].error is None
    assert items["fifo.png"].error == "not a regular file (fifo)" and items["fifo.png"].data == b""
    assert items["dangling.png"].error == "dangling symlink"
    assert items["loop.png"].error == "symlink loop"
    assert {"path": "fifo.tar", "reason": "shard cannot be read: not a regular file"} in stats.skipped_files


def test_symlinked_folders_are_followed_once_and_loops_reported(tmp_path):
    touch(tmp_path / "real/x.png", b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real/back").symlink_to(tmp_path, target_is_directory=True)
    stats = SourceStats()
    uids = [i.uid for i in iter_source(tmp_path, stats)]
    assert uids == ["link/x.png"]  # "link" sorts first: the folder is read through it, once
    reasons = {d["path"]: d["reason"] for d in stats.skipped_files}
    assert "already listed as 'link'" in reasons["real"]
    assert "already listed as '.'" in reasons["link/back"]


def test_non_utf8_names_get_escaped_uids(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(b"img")
    items = list(iter_source(tmp_path))
    assert [i.uid for i in items] == ["caf\\xe9.png"] and items[0].data == b"img"
    assert items[0].uid.encode("utf-8")  # storable as text


def test_unreadable_file_and_unlistable_folder_are_accounted_for(open_tmp):
    touch(open_tmp / "ok.png", b"ok")
    touch(open_tmp / "secret.png", b"s")
    touch(open_tmp / "closed/inside.png", b"i")
    (open_tmp / "secret.png").chmod(0)
    (open_tmp / "closed").chmod(0)

    def look():
        stats = SourceStats()
        items = [(i.uid, i.error) for i in iter_source(open_tmp, stats)]
        return {"items": items, "skipped": stats.skipped_files}

    got = _run_unprivileged(look)
    assert [tuple(x) for x in got["items"]] == [("ok.png", None), ("secret.png", "Permission denied")]
    assert got["skipped"] == [{"path": "closed", "reason": "folder cannot be listed: Permission denied"}]
