"""Partitions (the unit of decode+embed work) and the per-partition embedding shards."""

import os

import numpy as np

from dinoflow.curation.embed import PixelEmbedder
from dinoflow.curation.ingest import decode_settings, ingest_partitions, invalidate, load_partition, partition_done
from dinoflow.curation.partitions import Partition, Plan, embed_owners, plan_partitions, rank_partitions
from dinoflow.data.shards import write_shard
from dinoflow.data.sources import Entry

from .conftest import shape_image, tiny_cfg


def _png(i: int) -> bytes:
    import io

    buf = io.BytesIO()
    shape_image(i).save(buf, "PNG")
    return buf.getvalue()


def test_partitions_chunk_files_and_take_each_tar_whole(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(7):
        (root / f"a{i}.png").write_bytes(_png(i))
    write_shard(root / "m.tar", [(f"k{j}", _png(10 + j), "png", {}) for j in range(3)])
    (root / "z.png").write_bytes(_png(20))
    (root / "notes.txt").write_text("x")
    plan = plan_partitions("pool", [str(root)], 3, "settings")
    assert [[e.rel for e in p.entries] for p in plan.partitions] == [
        ["a0.png", "a1.png", "a2.png"],
        ["a3.png", "a4.png", "a5.png"],
        ["a6.png"],
        ["m.tar"],
        ["z.png"],
    ]
    assert [p.index for p in plan.partitions] == [0, 1, 2, 3, 4]
    assert plan.skipped == [{"source": str(root), "path": "notes.txt", "reason": "not an image or .tar"}]
    assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()
    again = plan_partitions("pool", [str(root)], 3, "settings")
    assert [p.key for p in again.partitions] == [p.key for p in plan.partitions]
    (root / "a4.png").write_bytes(_png(99) + b"\0")  # another size: its partition's key changes, no other
    changed = plan_partitions("pool", [str(root)], 3, "settings")
    assert [a.key == b.key for a, b in zip(plan.partitions, changed.partitions)] == [True, False, True, True, True]
    assert plan_partitions("pool", [str(root)], 3, "other settings").partitions[0].key != plan.partitions[0].key
    two = plan_partitions("pool", [str(root), str(root)], 3, "settings")
    assert two.partitions[0].uid_prefix == f"{root}/"


def test_ranks_get_contiguous_blocks_balanced_by_rows():
    assert [list(rank_partitions([5] * 10, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    # the demo pool's shape: a short last partition moves the boundary to the nearer side
    rows = [256] * 21 + [181]
    blocks = [rank_partitions(rows, r, 2) for r in range(2)]
    assert [sum(rows[i] for i in b) for b in blocks] == [2816, 2741]
    assert [list(rank_partitions([7, 7], r, 4)) for r in range(4)] == [[], [0], [], [1]]
    assert [list(rank_partitions([0, 0], r, 2)) for r in range(2)] == [[], [0, 1]]
    for world in (1, 2, 3, 5):  # every partition held once, in order
        held = [i for r in range(world) for i in rank_partitions([3, 0, 9, 1, 4, 4], r, world)]
        assert held == list(range(6))


def test_embedding_work_is_balanced_by_bytes_over_all_plans():
    def part(ns, i, sizes):
        return Partition(ns, i, "src", "", [Entry(f"{ns}{i}-{j}", "image", "ref", s) for j, s in enumerate(sizes)])

    parts = [part("pool", i, [10] * 4) for i in range(5)] + [part("pool", 5, [10]), part("eval0", 0, [10] * 4)]
    owners = embed_owners(parts, 2)
    load = [sum(10 * len(p.entries) for p, o in zip(parts, owners) if o == r) for r in range(2)]
    assert load == [130, 120] and owners == [0, 1, 0, 1, 0, 0, 1]  # largest first, ties to the lower rank
    assert embed_owners(parts, 1) == [0] * len(parts)


def test_ingest_writes_one_embedding_shard_per_partition_and_reuses_it(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(5):
        (root / f"img{i}.png").write_bytes(_png(i))
    (root / "twin.png").write_bytes(_png(0))  # pixel-identical to img0
    (root / "empty.png").write_bytes(b"")
    from PIL import Image

    Image.new("RGB", (24, 24), (9, 9, 9)).save(root / "flat.png")
    c = tiny_cfg(root, tmp_path / "out").curate
    emb = PixelEmbedder(size=8)
    plan = plan_partitions("pool", [str(root)], 4, decode_settings(c, emb.identity()))
    work = tmp_path / "work"
    seen = []
    got = ingest_partitions(plan.partitions, c, emb, work, show=False, on_partition=seen.append)
    assert got == {"partitions_computed": 2, "partitions_reused": 0} and seen == [1, 2]
    table, x = load_partition(work, plan.partitions[0])
    rows = table.to_pydict()
    assert rows["uid"] == ["empty.png", "flat.png", "img0.png", "img1.png"]
    assert rows["status"] == ["corrupt", "junk", "ok", "ok"] and rows["detail"][:2] == [
        "empty: zero bytes",
        "near_constant",
    ]
    assert rows["content_sha256"][0] == "" and len(rows["content_sha256"][2]) == 64
    assert os.fsdecode(rows["ref"][2]) == str(root / "img0.png")
    assert x.shape == (4, 64) and not x[:2].any() and np.allclose(np.linalg.norm(x[2:], axis=1), 1)
    t2, x2 = load_partition(work, plan.partitions[1])
    assert t2.column("uid").to_pylist()[-1] == "twin.png"
    np.testing.assert_array_equal(x2[-1], x[2])  # the twin has img0's embedding
    assert ingest_partitions(plan.partitions, c, emb, work, show=False) == {
        "partitions_computed": 0,
        "partitions_reused": 2,
    }
    invalidate(work, plan.partitions[1])
    assert not partition_done(work, plan.partitions[1])
    assert ingest_partitions(plan.partitions, c, emb, work, show=False)["partitions_computed"] == 1


def test_ingest_with_data_loader_workers_gives_the_same_shards(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(9):
        (root / f"img{i}.png").write_bytes(_png(i))
    c = tiny_cfg(root, tmp_path / "out").curate
    emb = PixelEmbedder(size=8)
    plan = plan_partitions("pool", [str(root)], 2, decode_settings(c, emb.identity()))
    ingest_partitions(plan.partitions, c, emb, tmp_path / "w0", show=False)
    ingest_partitions(plan.partitions, c, emb, tmp_path / "w2", workers=2, show=False)
    for p in plan.partitions:
        for suffix in (".parquet", ".npy"):
            a = (tmp_path / "w0" / "parts" / p.name).with_suffix(suffix).read_bytes()
            assert a == (tmp_path / "w2" / "parts" / p.name).with_suffix(suffix).read_bytes()
