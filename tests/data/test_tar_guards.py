"""The shard reader refuses what a tar header could make it hold: sparse members, links, members
over the byte limit, extended headers over their limit; repeated member names keep the first."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from hostile.corpus import good_png
from hostile.peak import run_measured
from hostile.tars import GIB, pax_header_bomb_tar, repeated_names_tar, sparse_bomb_tar, symlink_member_tar

from dinoflow.data.shards import ShardStats, iter_shard

# Peak RSS of a fresh interpreter reading a ~10 KB hostile tar. The reader before the guards held
# 3.4 GB on the sparse member; the interpreter with the reader imported peaks near 40 MiB.
READ_PEAK_LIMIT_MIB = 150


def _read_in_subprocess(path: Path) -> dict:
    """Read one shard in a fresh process: its samples, stats, skips and peak RSS (MiB)."""
    got, peak = run_measured(
        f"""
        from dinoflow.data.shards import ShardStats, iter_shard
        stats, skips = ShardStats(), []
        samples = [[s.key, len(s.data), s.error] for s in iter_shard({str(path)!r}, stats,
                   on_skip=lambda n, w: skips.append([n, w]))]
        RESULT = {{"samples": samples, "stats": stats.as_dict(), "skips": skips}}
        """
    )
    return {**got, "peak_mib": peak}


def test_sparse_member_claiming_3_gib_is_refused_unread_in_bounded_memory(tmp_path):
    path = tmp_path / "sparse.tar"
    path.write_bytes(sparse_bomb_tar(good_png(), claimed=3 * GIB))
    assert path.stat().st_size <= 16 * 1024
    with tarfile.open(path) as tf:  # the hostile input really claims 3 GiB
        assert tf.getmember("bomb.png").size == 3 * GIB and tf.getmember("bomb.png").issparse()
    got = _read_in_subprocess(path)
    assert got["peak_mib"] < READ_PEAK_LIMIT_MIB, got["peak_mib"]
    by_key = {k: (n, e) for k, n, e in got["samples"]}
    assert by_key["000001"][0] > 0 and by_key["000002"][0] > 0  # the good samples around it are read
    assert by_key["bomb"][0] == 0 and "sparse" in by_key["bomb"][1]
    assert got["stats"]["refused_members"] == 1


def test_member_over_the_byte_limit_is_refused_from_its_header(tmp_path):
    big, small = good_png(1) + b"\0" * 5000, good_png(2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("big.png", big), ("big.json", b"{}"), ("small.png", small)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    stats = ShardStats()
    got = {s.key: s for s in iter_shard(tmp_path / "s.tar", stats, max_member_bytes=len(big) - 1)}
    assert got["big"].data == b"" and got["big"].error.startswith("too_large: ")
    assert f"{len(big)} bytes" in got["big"].error
    assert got["small"].data == small and got["small"].error is None
    assert stats.refused_members == 1


def test_symlink_member_named_like_an_image_is_refused_with_its_kind(tmp_path):
    (tmp_path / "s.tar").write_bytes(symlink_member_tar(good_png()))
    got = {s.key: s for s in iter_shard(tmp_path / "s.tar")}
    assert got["000001"].data and got["link"].data == b""
    assert "symbolic link, not a regular file" in got["link"].error


def test_extended_header_claiming_3_gib_stops_the_shard_in_bounded_memory(tmp_path):
    path = tmp_path / "pax.tar"
    path.write_bytes(pax_header_bomb_tar(good_png(), claimed=3 * GIB))
    got = _read_in_subprocess(path)
    assert got["peak_mib"] < READ_PEAK_LIMIT_MIB, got["peak_mib"]
    assert [k for k, _, _ in got["samples"]] == ["000001"]  # what came before the header is whole
    assert got["stats"]["unreadable_tail"] == 1


def test_repeated_member_names_keep_the_first_and_report_the_repeats(tmp_path):
    pngs = [good_png(i) for i in range(5)]
    (tmp_path / "r.tar").write_bytes(repeated_names_tar(pngs))
    stats, skips = ShardStats(), []
    got = [(s.key, s.data, s.meta) for s in iter_shard(tmp_path / "r.tar", stats, on_skip=lambda n, w: skips.append(n))]
    assert [k for k, _, _ in got] == ["a", "b", "c"]  # every key once
    assert got[0][1] == pngs[0] and got[0][2] == {}  # the first a.png; the late a.json is not merged in
    assert got[2][1] == pngs[2]
    assert skips == ["a.png", "a.json", "c.png"] and stats.repeated_members == 3
