"""The per-file byte limit: an image file or object over it is refused from its size, unread."""

from __future__ import annotations

from hostile.corpus import good_png
from hostile.peak import run_measured
from hostile.tars import GIB, padded_png

from dinoflow.data import s3
from dinoflow.data.sources import iter_source

# A fresh interpreter listing and reading a folder peaks near 40 MiB; before the limit, reading
# the 1 GiB "PNG" held 1 GiB (and decoding it 2.4 GB).
READ_PEAK_LIMIT_MIB = 150


def test_a_1_gib_png_is_refused_from_its_size_in_bounded_memory(tmp_path):
    padded_png(tmp_path / "pool" / "huge.png", good_png(), size=GIB)
    (tmp_path / "pool" / "ok.png").write_bytes(good_png(1))
    got, peak = run_measured(
        f"""
        from dinoflow.data.sources import iter_source
        RESULT = [[i.uid, len(i.data), i.error] for i in iter_source({str(tmp_path / "pool")!r})]
        """
    )
    assert peak < READ_PEAK_LIMIT_MIB, peak
    by_uid = {u: (n, e) for u, n, e in got}
    assert by_uid["ok.png"] == (len(good_png(1)), None)
    assert by_uid["huge.png"][0] == 0
    assert by_uid["huge.png"][1].startswith("too_large: ") and f"{GIB} bytes" in by_uid["huge.png"][1]


def test_the_limit_is_a_setting_and_applies_to_s3_objects(tmp_path, bucket):
    big, small = good_png(2) + b"\0" * 4000, good_png(3)
    s3.write_bytes(f"s3://{bucket}/pool/big.png", big)
    s3.write_bytes(f"s3://{bucket}/pool/small.png", small)
    from dinoflow.data.sources import SourceStats, iter_entry, list_source

    stats = SourceStats()
    items = [
        i for e in list_source(f"s3://{bucket}/pool", stats) for i in iter_entry(e, "s3", stats, max_bytes=len(small))
    ]
    got = {i.uid: i for i in items}
    assert got["big.png"].data == b"" and got["big.png"].error.startswith("too_large: ")
    assert got["small.png"].data == small and got["small.png"].error is None
    assert [i.uid for i in iter_source(f"s3://{bucket}/pool")] == ["big.png", "small.png"]  # default: both read
