"""A finished partition is reused only while its entries hold the same bytes: a change that keeps
the size and the modification time (`touch -r`) is caught, for image files and for tar shards."""

from __future__ import annotations

import io
import os

from dinoflow.curation.embed import PixelEmbedder
from dinoflow.curation.ingest import decode_settings, ingest_partitions, load_partition
from dinoflow.curation.partitions import plan_partitions
from dinoflow.data.shards import write_shard

from .conftest import shape_image, tiny_cfg


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    shape_image(i).save(buf, "PNG")
    return buf.getvalue()


def _same_size_and_mtime(path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_tar_rewritten_with_its_size_and_mtime_is_ingested_again(tmp_path):
    root = tmp_path / "pool"
    a, b = _png(1), _png(2)
    write_shard(root / "s.tar", [("k0", a, "png", {}), ("k1", _png(3), "png", {})])
    c = tiny_cfg(root, tmp_path / "out").curate
    emb = PixelEmbedder(size=8)

    def run():
        plan = plan_partitions("pool", [str(root)], 4, decode_settings(c, emb.identity()))
        return plan, ingest_partitions(plan.partitions, c, emb, tmp_path / "work", show=False)

    plan, first = run()
    assert first == {"partitions_computed": 1, "partitions_reused": 0}
    assert run()[1] == {"partitions_computed": 0, "partitions_reused": 1}
    old_hash = load_partition(tmp_path / "work", plan.partitions[0])[0].column("content_sha256").to_pylist()[0]
    # the same shard with k0's image swapped for another of the same length
    swap = b if len(b) == len(a) else (b + b"\0" * len(a))[: len(a)]
    data = (root / "s.tar").read_bytes()
    _same_size_and_mtime(root / "s.tar", data.replace(a, swap, 1))
    plan2, again = run()
    assert plan2.partitions[0].key == plan.partitions[0].key  # the listing alone cannot see it
    assert again == {"partitions_computed": 1, "partitions_reused": 0}
    new_hash = load_partition(tmp_path / "work", plan2.partitions[0])[0].column("content_sha256").to_pylist()[0]
    assert new_hash != old_hash


def test_an_image_rewritten_with_its_size_and_mtime_is_ingested_again(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(3):
        (root / f"img{i}.png").write_bytes(_png(i))
    c = tiny_cfg(root, tmp_path / "out").curate
    emb = PixelEmbedder(size=8)
    plan = plan_partitions("pool", [str(root)], 2, decode_settings(c, emb.identity()))
    ingest_partitions(plan.partitions, c, emb, tmp_path / "work", show=False)
    victim = root / "img2.png"
    data = victim.read_bytes()
    _same_size_and_mtime(victim, data[:-12] + bytes(12))  # IEND clobbered: same size, other bytes
    got = ingest_partitions(plan.partitions, c, emb, tmp_path / "work", show=False)
    assert got == {"partitions_computed": 1, "partitions_reused": 1}  # only img2's partition
