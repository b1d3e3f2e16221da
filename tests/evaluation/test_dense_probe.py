"""The dense linear probes learn planted tasks; the demo sets are what their docstring says."""

from __future__ import annotations

import numpy as np
import torch

from dinoflow.evaluation import dense_demo
from dinoflow.evaluation.dense_data import IGNORE_INDEX, DenseImages
from dinoflow.evaluation.dense_features import backbone_grids, pixel_grids
from dinoflow.evaluation.dense_probe import DenseTarget, dense_probe
from dinoflow.models import build_backbone

COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)


def _planted(n, seed, block=8, side=32):
    """Images of 8×8 blocks (2×2 patches of 4 px), each a fixed colour per class: the class is linear in
    the pixels. Only the pixels next to a block edge depend on the bilinear upsampling of the logits."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        cls = rng.integers(0, len(COLOURS), (side // block, side // block))
        t = np.kron(cls, np.ones((block, block), np.int64))
        images.append(COLOURS[t])
        targets.append(t)
    return DenseImages(images, targets)


def test_linear_probe_learns_a_planted_segmentation():
    train, test = _planted(60, 0), _planted(20, 1)
    kw = {"size": 32, "patch": 4}
    res = dense_probe(
        pixel_grids(train.images, **kw), train, pixel_grids(test.images, **kw), test,
        DenseTarget("segmentation", num_classes=4),
        lrs=[1e-2, 1e-1], epochs=15, batch_size=8, val_fraction=0.2, seed=0,
    )  # fmt: skip
    assert res.metrics["miou"] >= 0.95, res.metrics
    assert res.preds[0].shape == (32, 32) and res.preds[0].dtype == np.int64
    assert set(res.val) == {"0.01", "0.1"} and res.lr in (1e-2, 1e-1)


def _ramps(n, seed, side=32):
    """Grey planar ramps; depth = 1 + 5·intensity: smooth, so the bilinear upsampling of the predicted
    depth costs nothing and the probe's own error is what is measured."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    images, depths = [], []
    for _ in range(n):
        a, b, c = rng.uniform(0.1, 0.5), rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4)
        v = np.clip(a + b * xx + c * yy + 0.2, 0.05, 0.95)
        images.append(np.repeat((v * 255).round().astype(np.uint8)[..., None], 3, 2))
        depths.append((1 + 5 * v).astype(np.float32))
    return DenseImages(images, depths)


def test_linear_depth_probe_learns_a_planted_depth():
    train, test = _ramps(60, 0), _ramps(20, 1)
    kw = {"size": 32, "patch": 4}
    res = dense_probe(
        pixel_grids(train.images, **kw), train, pixel_grids(test.images, **kw), test,
        DenseTarget("depth", max_depth=6.0),
        lrs=[1e-2, 1e-1], epochs=20, batch_size=8, val_fraction=0.2, seed=0,
    )  # fmt: skip
    spread = float(np.std(np.concatenate([t.ravel() for t in test.targets])))
    assert res.metrics["rmse"] < 0.4 * spread, (res.metrics, spread)  # predicting the mean scores 1.0 · spread
    assert res.metrics["delta1"] > 0.95 and res.preds[0].dtype == np.float32


def test_backbone_grids_concatenate_the_cls_token_for_depth():
    torch.manual_seed(0)
    m = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0)
    images = [np.zeros((30, 40), np.uint8), np.full((56, 56, 3), 90, np.uint8)]
    g = backbone_grids(m, images, size=58, with_cls=False)  # 58 → 56: a multiple of the patch
    assert g.shape == (2, m.embed_dim, 8, 8)
    gc = backbone_grids(m, images, size=56, with_cls=True)
    assert gc.shape == (2, 2 * m.embed_dim, 8, 8)
    torch.testing.assert_close(gc[:, : m.embed_dim], g)
    assert torch.equal(gc[:, m.embed_dim :, 0, 0], gc[:, m.embed_dim :, 5, 3])


def test_demo_dense_sets_hold_their_planted_truth():
    seg = dense_demo.demo_segmentation("m")
    assert (len(seg.train), len(seg.test), seg.num_classes) == (dense_demo.N_TRAIN, dense_demo.N_TEST, 11)
    img, t = seg.test.images[0], seg.test.targets[0]
    assert img.shape == t.shape == (56, 56) and IGNORE_INDEX not in t
    for r in (0, 28):  # each 28-px cell holds one label: a digit's class (1 + digit) or 0 where it is empty
        for c in (0, 28):
            cell, img_cell = t[r : r + 28, c : c + 28], img[r : r + 28, c : c + 28]
            assert len(np.unique(cell)) == 1 and (cell[0, 0] == 0) == (img_cell.max() == 0)
    depth = dense_demo.demo_depth("d")
    assert all(t.shape == (56, 56) and t.max() <= dense_demo.MAX_RANGE for t in depth.test.targets)
    for img, d in zip(depth.test.images[:20], depth.test.targets[:20]):
        first = d[:, 0]  # column 0: the ground (or a digit standing on it), sky and out-of-range rows 0
        valid = np.flatnonzero(first > 0)
        assert len(valid) and np.all(first[valid[0] :] > 0)  # valid from the range's far end down to the bottom
        assert np.all(np.diff(first[valid[0] :]) <= 1e-6) or img[:, 0].max() >= 160  # nearer downwards, or a digit
    # the camera's pitch moves the horizon: the first valid row differs from image to image
    firsts = {int(np.flatnonzero(d[:, 0] > 0)[0]) for d in depth.test.targets}
    assert len(firsts) > 10
    # the ground plane: 28 / (y − h), 0 at and above the horizon and beyond the range
    g = dense_demo.ground_depth(np.arange(56), horizon=-3.0)
    assert np.allclose(g, 28.0 / (np.arange(56) + 3.0))
    g = dense_demo.ground_depth(np.arange(56), horizon=10.0)
    assert (
        np.all(g[:13] == 0)
        and np.isclose(g[13], 28.0 / 3.0)
        and np.isclose(g[14], 7.0)
        and np.isclose(g[55], 28.0 / 45.0)
    )
    again = dense_demo.demo_depth("d")
    assert all(np.array_equal(a, b) for a, b in zip(depth.train.images, again.train.images))  # seeded
