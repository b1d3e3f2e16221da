"""The training stream on bad data: a source with no decodable image is refused before training
(naming the key and counting what failed), and the stream never loops forever on bad samples."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from dinoflow.errors import DinoflowError
from dinoflow.train import data
from dinoflow.train.data import TrainStream, check_training_data, discover_units

from .conftest import cli_overrides, run_cli


def _bad_folder(root, n):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img_{i:04d}.png").write_bytes(b"not a png " + bytes([i % 256]) * 64)
    return root


def test_probe_names_the_key_and_counts_the_undecodable(tmp_path):
    folder = _bad_folder(tmp_path / "junk", 30)
    with pytest.raises(
        DinoflowError,
        match=r"pretrain.data=.*junk: no decodable image in the first 10 samples tried "
        r"\(10 undecodable: 10 not_an_image; e.g. .*img_0000.png",
    ):
        check_training_data(str(folder), "pretrain.data", limit=10)
    with pytest.raises(DinoflowError, match=r"no decodable image in all 30 samples \(30 undecodable"):
        check_training_data(str(folder), "pretrain.data")


def test_probe_passes_data_with_an_image(tmp_path, image_folder):
    folder = _bad_folder(tmp_path / "mixed", 5)
    Image.open(next(image_folder.iterdir())).save(folder / "zz_good.png")
    assert check_training_data(str(folder), "pretrain.data") == discover_units(str(folder))


def test_stream_stops_after_a_run_of_undecodable_samples(tmp_path, image_folder, monkeypatch):
    folder = _bad_folder(tmp_path / "mostly_bad", 40)
    Image.open(next(image_folder.iterdir())).save(folder / "good.png")
    monkeypatch.setattr(data, "MAX_UNDECODABLE_RUN", 8)
    with pytest.raises(DinoflowError, match=r"gave 8 undecodable samples in a row"):
        for _ in TrainStream(str(folder), load_size=28, seed=0):
            pass


def test_stream_stops_after_an_epoch_without_an_image(tmp_path):
    folder = _bad_folder(tmp_path / "junk", 12)
    with pytest.raises(DinoflowError, match=r"none of the 12 samples this rank read .* decodes as an image"):
        next(iter(TrainStream(str(folder), load_size=28, seed=0)))


@pytest.mark.slow
def test_pretrain_on_a_folder_of_undecodable_files_ends_with_a_named_error(tmp_path):
    """The reported hang: it looped forever, silently. Now a named error, in seconds."""
    folder = _bad_folder(tmp_path / "junk", 40)
    t0 = time.monotonic()
    r = run_cli(["pretrain", *cli_overrides(tmp_path, folder)], cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "pretrain.data=" in r.stderr and "no decodable image in all 40 samples (40 undecodable" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "teacher").exists(), "refused before any work"
