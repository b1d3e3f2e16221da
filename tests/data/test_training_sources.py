"""Training reads what curation reads: `train.data.discover_units` lists a source with curation's
`list_source`, so an s3:// folder of images (not only of shards) trains, on a real S3 endpoint
(moto_server, tests/data/conftest.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dinoflow.data import s3
from dinoflow.data.formats import IMAGE_SUFFIXES
from dinoflow.data.shards import ShardWriter
from dinoflow.data.sources import list_source
from dinoflow.errors import DinoflowError
from dinoflow.train.data import FILES_PER_UNIT, TrainStream, check_training_data, discover_units


def _png(i: int, side: int = 20) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_s3_folder_of_images_trains(bucket):
    names = [f"pool/{c}/img_{i:03d}.png" for c in ("a", "b") for i in range(5)]
    for i, key in enumerate(names):
        s3.write_bytes(f"s3://{bucket}/{key}", _png(i))
    s3.write_bytes(f"s3://{bucket}/pool/notes.txt", b"not an input")
    source = f"s3://{bucket}/pool"

    units = check_training_data(source, "pretrain.data")
    assert units == [("files", [f"s3://{bucket}/{k}" for k in sorted(names)])]
    assert units == discover_units(source)
    # the same inputs curation lists from that prefix
    assert [r for _, refs in units for r in refs] == [e.ref for e in list_source(source) if e.kind == "image"]
    batch = next(iter(TrainStream(source, load_size=16, seed=0, batch_size=4)))
    assert batch["prepared"]["images"].shape == (4, 3, 16, 16) and batch["skipped"] == 0


def test_an_s3_prefix_of_shards_is_read_as_shards(bucket, tmp_path):
    with ShardWriter(str(tmp_path / "shards"), 3) as w:
        for i in range(5):
            w.write(f"{i:06d}", _png(i), "png", {})
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    for t in tars:
        s3.write_bytes(f"s3://{bucket}/curated/{t.name}", t.read_bytes())
    units = discover_units(f"s3://{bucket}/curated/")
    assert units == [("shard", f"s3://{bucket}/curated/{t.name}") for t in tars] and len(units) == 2


def test_a_local_folder_is_listed_as_curation_lists_it(tmp_path):
    root = tmp_path / "pool"
    for i, rel in enumerate(["b/x.PNG", "a/y.jpg", ".hidden/z.png", ".tmp.png", "readme.md", "c/d/w.webp"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(i))
    refs = [r for _, refs in discover_units(str(root)) for r in refs]
    assert refs == [e.ref for e in list_source(root)] == [str(root / p) for p in ("a/y.jpg", "b/x.PNG", "c/d/w.webp")]


def test_many_files_are_split_into_units(tmp_path):
    for i in range(FILES_PER_UNIT + 3):
        (tmp_path / f"{i:05d}.png").write_bytes(b"")
    assert [len(refs) for _, refs in discover_units(str(tmp_path))] == [FILES_PER_UNIT, 3]


def test_no_inputs_names_the_suffixes(tmp_path):
    (tmp_path / "a.gif").write_bytes(_png(0))
    with pytest.raises(DinoflowError, match="holds no .tar shards and no images") as e:
        discover_units(str(tmp_path))
    assert all(s in str(e.value) for s in IMAGE_SUFFIXES)
    with pytest.raises(DinoflowError, match="does not exist: run `dinoflow curate` first"):
        discover_units(str(tmp_path / "missing"))


def test_one_list_of_image_suffixes():
    """The shard format's extensions are the same list, without the dot."""
    from dinoflow.data.shards import IMAGE_EXTS

    assert tuple(f".{e}" for e in IMAGE_EXTS) == IMAGE_SUFFIXES
    assert len(set(IMAGE_SUFFIXES)) == len(IMAGE_SUFFIXES) and all(s == s.lower() for s in IMAGE_SUFFIXES)
