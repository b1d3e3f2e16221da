"""The dense folder formats: what loads, and every bad pair named before work."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinoflow.errors import DinoflowError
from dinoflow.evaluation.dense_data import IGNORE_INDEX, load_dense_folder, segmentation_classes


def _img(path, h=16, w=20, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)


def _mask(path, h=16, w=20, value=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.full((h, w), value, np.uint8)
    m[0, 0] = IGNORE_INDEX
    Image.fromarray(m, "L").save(path)


def _depth(path, h=16, w=20, mm=1500):
    path.parent.mkdir(parents=True, exist_ok=True)
    d = np.full((h, w), mm, np.uint16)
    d[1, 1] = 0
    Image.fromarray(d).save(path)


def test_segmentation_folder_loads_pairs_by_stem(tmp_path):
    for stem in ("a", "b"):
        _img(tmp_path / "images" / f"{stem}.jpg")
        _mask(tmp_path / "masks" / f"{stem}.png", value=2 if stem == "a" else 5)
    split = load_dense_folder(tmp_path, "segmentation")
    assert len(split) == 2 and split.images[0].shape == (16, 20, 3)
    assert split.targets[0].dtype == np.int64 and split.targets[0][0, 0] == IGNORE_INDEX
    assert int(split.targets[1][5, 5]) == 5
    assert segmentation_classes(split, split) == [str(i) for i in range(6)]


def test_depth_folder_reads_16_bit_millimetres_as_metres(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _depth(tmp_path / "depth" / "a.png", mm=1500)
    (d,) = load_dense_folder(tmp_path, "depth").targets
    assert d.dtype == np.float32 and d[0, 0] == pytest.approx(1.5) and d[1, 1] == 0.0


def test_every_bad_pair_is_listed_before_work(tmp_path):
    _img(tmp_path / "images" / "no_mask.png")
    _mask(tmp_path / "masks" / "no_image.png")
    _img(tmp_path / "images" / "small.png", h=8, w=8)
    _mask(tmp_path / "masks" / "small.png")
    _img(tmp_path / "images" / "rgbmask.png")
    _img(tmp_path / "masks" / "rgbmask.png")  # an RGB picture is not a class-id mask
    with pytest.raises(DinoflowError) as e:
        load_dense_folder(tmp_path, "segmentation")
    msg = str(e.value)
    assert "images without a masks file: no_mask" in msg
    assert "masks files without an image: no_image" in msg
    assert "small: image 8×8 vs target 20×16" in msg
    assert "rgbmask.png: mode RGB" in msg


def test_depth_of_8_bits_is_refused_with_the_reason(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "depth" / "a.png", mode="L")
    with pytest.raises(DinoflowError, match="8-bit grey .*16-bit millimetres"):
        load_dense_folder(tmp_path, "depth")


def test_missing_folders_and_empty_masks_are_named(tmp_path):
    with pytest.raises(DinoflowError, match="images"):
        load_dense_folder(tmp_path / "nope", "segmentation")
    _img(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DinoflowError, match="masks holds no images"):
        load_dense_folder(tmp_path, "segmentation")
    _mask(tmp_path / "masks" / "a.png", value=IGNORE_INDEX)
    split = load_dense_folder(tmp_path, "segmentation")
    with pytest.raises(DinoflowError, match="no labelled pixel"):
        segmentation_classes(split, split)
