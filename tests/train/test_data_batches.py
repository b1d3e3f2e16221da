"""The training stream's batches: whole images (no centre square), host-side views prepared in the
workers, and the batch order of a resumed loader with several workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinoflow.config import load_config
from dinoflow.train.data import MAX_ASPECT, load_image, make_loader, resolve_workers
from dinoflow.train.views import Views


def test_load_image_keeps_the_whole_image():
    """Regression: `load_size` cropped a centre square, so multi-crop never saw the borders of a
    non-square image; the recipe crops from the whole image."""
    arr = np.zeros((30, 60, 3), dtype=np.uint8)
    arr[:, :10] = 255  # a left border a centre square would cut off
    out = load_image(Image.fromarray(arr), 28)
    assert out.shape == (3, 28, 56)
    assert out[:, :, :3].float().mean() > 200
    panorama = load_image(Image.fromarray(np.zeros((10, 200, 3), dtype=np.uint8)), 14)
    assert panorama.shape == (3, 14, int(14 * MAX_ASPECT))


def test_differently_shaped_images_reach_multicrop_as_a_list(tmp_path):
    for i, (h, w) in enumerate([(28, 28), (28, 42), (35, 28), (28, 28)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    loader = make_loader(str(tmp_path), load_size=28, seed=0, rank=0, world_size=1, batch_size=4, num_workers=0)
    batch = next(loader)
    images = batch["prepared"]["images"]
    assert isinstance(images, list) and sorted(tuple(im.shape) for im in images) == [
        (3, 28, 28),
        (3, 28, 28),
        (3, 28, 42),
        (3, 35, 28),
    ]
    cfg = load_config(None, ["pretrain.crops={global_size: 28, local_size: 14, n_local: 2}"]).pretrain
    views = Views(cfg.crops, cfg.masks, 7, seed=0).finish(batch["prepared"], batch["step"], torch.device("cpu"))
    assert views["global_crops"].shape == (8, 3, 28, 28) and views["local_crops"].shape == (8, 3, 14, 14)


def _views(masks=True):
    cfg = load_config(None, ["pretrain.crops={global_size: 28, local_size: 14, n_local: 2}"]).pretrain
    return Views(cfg.crops, cfg.masks if masks else None, 7, seed=3)


def test_host_half_in_workers_gives_the_views_of_the_one_shot_path(image_folder):
    """Masks (and on a CPU the crops) are made by the loader's workers; the views equal the
    ones the loop made itself before, for the same step."""
    views = _views().bind(rank=0, crops_on_host=True)
    loader = make_loader(
        str(image_folder),
        load_size=28,
        seed=1,
        rank=0,
        world_size=1,
        batch_size=4,
        num_workers=2,
        prepare=views.prepare,
    )
    raw = make_loader(str(image_folder), load_size=28, seed=1, rank=0, world_size=1, batch_size=4, num_workers=2)
    for step in range(3):
        batch, plain = next(loader), next(raw)
        assert batch["step"] == plain["step"] == step
        assert {"global_crops", "local_crops", "masks", "mask_indices", "masks_weight"} <= set(batch["prepared"])
        got = views.finish(batch["prepared"], step, torch.device("cpu"))
        want = _views()(plain["prepared"]["images"], step, 0)
        for k in ("global_crops", "local_crops", "masks", "mask_indices", "masks_weight", "n_masked_patches"):
            assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resumed_loader_continues_with_the_same_batches(image_folder, workers):
    """Regression: with W > 1 workers a restart at step k (k % W ≠ 0) handed batch k to the
    wrong worker, so batches came back in another order than the uninterrupted run's."""

    def stream(skip, n):
        it = make_loader(
            str(image_folder),
            load_size=28,
            seed=5,
            rank=0,
            world_size=1,
            batch_size=4,
            num_workers=workers,
            skip_batches=skip,
        )
        return [next(it) for _ in range(n)]

    straight = stream(0, 8)
    resumed = stream(5, 3)
    assert [b["step"] for b in resumed] == [5, 6, 7]
    for a, b in zip(straight[5:], resumed):
        assert torch.equal(a["prepared"]["images"], b["prepared"]["images"])


def test_worker_count_follows_the_device():
    assert resolve_workers(None, torch.device("cpu")) == 0
    assert 1 <= resolve_workers(None, torch.device("cuda", 0), local_world_size=1) <= 8
    assert resolve_workers(3, torch.device("cpu")) == 3
