"""The demo pool: ground truth matches the files, planted kinds behave as labelled, bytes are reproducible."""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoflow.config import Config
from dinoflow.data.decode import CorruptImage, decode_image, pixel_hash
from dinoflow.demo import pool as demo
from dinoflow.demo.sources import mnist_split
from dinoflow.errors import DinoflowError

SMALL = {
    "n_exact_dups": 12,
    "n_near_dups": 16,
    "n_junk": 9,
    "n_corrupt": 10,
    "n_eval_copies": 6,
    "n_seeds_per_class": 3,
}


def cfg_for(out: Path, **demo_overrides) -> Config:
    return Config(demo={"out_dir": str(out), **demo_overrides}, tracking={"enabled": False})


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- fast unit checks


def fake_digit(seed: int = 0) -> np.ndarray:
    """A 28×28 uint8 stroke on black (MNIST-like) without loading MNIST."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (28, 28), 0)
    from PIL import ImageDraw

    pts = [tuple(int(v) for v in rng.integers(6, 22, size=2)) for _ in range(4)]
    ImageDraw.Draw(img).line(pts, fill=255, width=3)
    return np.asarray(img).copy()


def test_bomb_png_is_refused_as_a_bomb():
    with pytest.raises(CorruptImage) as ei:
        decode_image(demo.bomb_png())
    assert ei.value.reason == "decompression_bomb"


def test_exact_variants_keep_pixels_and_change_bytes():
    img = fake_digit(0)
    base = demo.png_bytes(img)
    h = pixel_hash(decode_image(base))
    for v in demo.EXACT_VARIANTS:
        data = demo._exact_variant(img, v)
        assert pixel_hash(decode_image(data)) == h, v
        assert (data == base) == (v == "byte_copy"), v


@pytest.mark.parametrize("transform", demo.NEAR_TRANSFORMS)
def test_near_transforms_change_pixels_a_little(transform):
    img = fake_digit(1)
    out, params = demo._near_variant(img, transform, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 40  # still the same digit, roughly
    if transform == "shift":
        dx, dy = params["dx"], params["dy"]
        assert 0 < max(abs(dx), abs(dy)) <= 2
        np.testing.assert_array_equal(np.roll(img, (dy, dx), axis=(0, 1))[2:-2, 2:-2], out[2:-2, 2:-2])


# ---------------------------------------------------------------- the built pool


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = demo.build_demo(cfg_for(out, **SMALL))
    truth = json.loads((out / "ground_truth.json").read_text())
    return out, summary, truth


@pytest.mark.slow
def test_counts_and_every_file_listed_once(built):
    out, summary, truth = built
    pool = truth["pool"]
    files = sorted(p.name for p in (out / "pool").iterdir())
    assert files == sorted(pool)  # every pool file is in the ground truth exactly once, and nothing else
    kinds = collections.Counter(r["kind"] for r in pool.values())
    expected = {
        "original": 4000,
        "digits": 1257,
        "exact_dup": SMALL["n_exact_dups"],
        "near_dup": SMALL["n_near_dups"],
        "eval_copy": SMALL["n_eval_copies"],
        "junk": SMALL["n_junk"],
        "corrupt": SMALL["n_corrupt"],
    }
    assert dict(kinds) == expected
    assert truth["totals"] == {**expected, "pool": sum(expected.values()), "seeds": 30, "eval": 1000}
    assert {k: summary[k] for k in truth["totals"]} == truth["totals"]
    assert len(list((out / "seeds").iterdir())) == 30 and len(list((out / "eval").iterdir())) == 1000
    assert all(n.startswith("img_") and n.endswith(".png") for n in files)  # names do not reveal the kind


@pytest.mark.slow
def test_planted_kinds_behave_as_labelled(built):
    out, _, truth = built
    pool = truth["pool"]
    hashes: dict[str, list[str]] = collections.defaultdict(list)
    pixels = {}
    for uid, rec in pool.items():
        data = (out / "pool" / uid).read_bytes()
        if rec["kind"] == "corrupt":
            with pytest.raises(CorruptImage) as ei:
                decode_image(data)
            assert ei.value.reason == rec["expected_reason"], (uid, rec)
            continue
        img = decode_image(data)
        assert img.size == (28, 28)
        hashes[pixel_hash(img)].append(uid)
        pixels[uid] = np.asarray(img)[..., 0].astype(int)
    assert {r["corrupt_kind"] for r in pool.values() if r["kind"] == "corrupt"} == set(demo.CORRUPT_KINDS)
    # exact duplicates are exactly the pixel-identical groups: {original X} ∪ {exact dups of X}
    groups = sorted(sorted(g) for g in hashes.values() if len(g) > 1)
    want = collections.defaultdict(list)
    for uid, rec in pool.items():
        if rec["kind"] == "exact_dup":
            want[rec["of"]].append(uid)
    assert groups == sorted(sorted([src, *dups]) for src, dups in want.items())
    for uid, rec in pool.items():
        if rec["kind"] in ("exact_dup", "near_dup"):
            assert pool[rec["of"]]["kind"] == "original" and pool[rec["of"]]["label"] == rec["label"]
        if rec["kind"] == "near_dup":  # the recorded transform reproduces the file from its source
            out_px, src = pixels[uid], pixels[rec["of"]].astype(np.uint8)
            t, prm = rec["transform"], rec["params"]
            if t == "shift":
                np.testing.assert_array_equal(
                    np.roll(src, (prm["dy"], prm["dx"]), axis=(0, 1))[2:-2, 2:-2], out_px[2:-2, 2:-2]
                )
            elif t == "jpeg":
                np.testing.assert_array_equal(demo.jpeg_roundtrip(src, prm["quality"]), out_px)
            elif t == "crop_resize":
                want = Image.fromarray(src).crop(tuple(prm["box"])).resize((28, 28), Image.Resampling.BICUBIC)
                np.testing.assert_array_equal(np.asarray(want), out_px)
            else:
                diff = np.abs(out_px - src.astype(int))
                assert 0 < diff.mean() < prm["sigma"] and diff.max() <= 6 * prm["sigma"]
    # eval copies point at eval images and look like them
    for uid, rec in pool.items():
        if rec["kind"] == "eval_copy":
            ev = np.asarray(decode_image((out / "eval" / rec["of"]).read_bytes()))[..., 0].astype(int)
            assert np.abs(ev - pixels[uid]).max() <= (0 if rec["variant"] == "exact" else 40)


@pytest.mark.slow
def test_labels_match_the_packaged_split(built):
    out, _, truth = built
    tr_x, tr_y, te_x, te_y = mnist_split(0)
    for uid, rec in list(truth["pool"].items())[:300]:
        if rec["kind"] == "original":
            a = np.asarray(Image.open(out / "pool" / uid))
            np.testing.assert_array_equal(a, tr_x[rec["mnist_train_index"]])
            assert rec["label"] == tr_y[rec["mnist_train_index"]]
    per_class = collections.Counter(r["label"] for r in truth["seeds"].values())
    assert per_class == {c: 3 for c in range(10)}
    for uid, rec in truth["seeds"].items():
        assert uid.startswith(f"class{rec['label']}_")
        assert (out / "seeds" / uid).read_bytes() == (out / "pool" / rec["pool_uid"]).read_bytes()
    for uid, rec in list(truth["eval"].items())[:50]:
        np.testing.assert_array_equal(np.asarray(Image.open(out / "eval" / uid)), te_x[rec["mnist_test_index"]])
        assert rec["label"] == te_y[rec["mnist_test_index"]]


@pytest.mark.slow
def test_same_config_same_bytes_and_rerun_is_idempotent(built, tmp_path):
    out, _, _ = built
    other = tmp_path / "again"
    demo.build_demo(cfg_for(other, **SMALL))
    assert tree_digest(other) == tree_digest(out)
    again = demo.build_demo(cfg_for(other, **SMALL))
    assert again["files_written"] == 0 and again["files_removed"] == 0
    assert tree_digest(other) == tree_digest(out)


@pytest.mark.slow
def test_other_seed_differs_and_shrinking_removes_stale_files(built, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(built[0], out)
    first = tree_digest(out)
    smaller = {**SMALL, "n_junk": 3, "n_corrupt": 5, "include_digits": False, "seed": 1}
    summary = demo.build_demo(cfg_for(out, **smaller))
    truth = json.loads((out / "ground_truth.json").read_text())
    assert sorted(p.name for p in (out / "pool").iterdir()) == sorted(truth["pool"])
    assert summary["files_removed"] > 0 and summary["pool"] == len(truth["pool"])
    assert tree_digest(out) != first


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "d" / "pool").mkdir(parents=True)
    (tmp_path / "d" / "pool" / "my_photo.jpg").write_bytes(b"x")
    with pytest.raises(DinoflowError, match="files the demo did not write.*my_photo.jpg"):
        demo.build_demo(cfg_for(tmp_path / "d", **SMALL))


def test_impossible_counts_are_refused(tmp_path):
    with pytest.raises(DinoflowError, match="n_eval_copies"):
        demo.build_demo(cfg_for(tmp_path, n_eval=10, n_eval_copies=11))
