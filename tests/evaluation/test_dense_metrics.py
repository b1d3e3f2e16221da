"""mIoU, pixel accuracy and the depth metrics against a float64 reference written pixel by pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinoflow.evaluation.dense_data import IGNORE_INDEX
from dinoflow.evaluation.dense_metrics import depth_metrics, segmentation_metrics


def _reference_seg(preds, targets, c):
    inter = [0.0] * c
    union = [0.0] * c
    correct = labelled = 0
    for p, t in zip(preds, targets):
        for pv, tv in zip(p.ravel().tolist(), t.ravel().tolist()):
            if tv == IGNORE_INDEX:
                continue
            labelled += 1
            correct += pv == tv
            for k in range(c):
                inter[k] += pv == k and tv == k
                union[k] += pv == k or tv == k
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return sum(ious) / len(ious), correct / labelled


def test_segmentation_metrics_match_the_pixel_loop():
    rng = np.random.default_rng(0)
    c = 5
    targets = [rng.integers(0, c - 1, (7, 9)) for _ in range(3)]  # class 4 never in the truth
    for t in targets:
        t[rng.random(t.shape) < 0.2] = IGNORE_INDEX
    preds = [rng.integers(0, c - 1, t.shape) for t in targets]  # nor predicted: left out of the mean
    got = segmentation_metrics(preds, targets, c)
    miou, acc = _reference_seg(preds, targets, c)
    assert got["miou"] == pytest.approx(miou, abs=1e-12) and got["pixel_acc"] == pytest.approx(acc, abs=1e-12)
    perfect = segmentation_metrics([np.where(t == IGNORE_INDEX, 0, t) for t in targets], targets, c)
    assert perfect == {"miou": 1.0, "pixel_acc": 1.0}


def test_depth_metrics_match_the_definitions_per_image_then_mean():
    rng = np.random.default_rng(1)
    targets = [rng.uniform(0.5, 8.0, (6, 6)).astype(np.float32) for _ in range(3)]
    targets[0][0, :] = 0  # no measurement: left out
    preds = [t * rng.uniform(0.7, 1.4, t.shape) for t in targets]
    got = depth_metrics(preds, targets, 1e-3, 100.0)  # no clamping here: the reference has none
    rmse, rel, d1 = [], [], []
    for p, g in zip(preds, targets):
        pairs = [(float(a), float(b)) for a, b in zip(p.ravel(), g.ravel()) if b > 0]
        rmse.append(math.sqrt(sum((a - b) ** 2 for a, b in pairs) / len(pairs)))
        rel.append(sum(abs(a - b) / b for a, b in pairs) / len(pairs))
        d1.append(sum(max(a / b, b / a) < 1.25 for a, b in pairs) / len(pairs))
    assert got["rmse"] == pytest.approx(np.mean(rmse), rel=1e-6)
    assert got["abs_rel"] == pytest.approx(np.mean(rel), rel=1e-6)
    assert got["delta1"] == pytest.approx(np.mean(d1), rel=1e-9)


def test_depth_predictions_are_clamped_to_the_bins_range():
    g = [np.full((2, 2), 5.0, np.float32)]
    assert depth_metrics([np.full((2, 2), 50.0)], g, 1e-3, 10.0)["rmse"] == pytest.approx(5.0)
    assert depth_metrics([np.full((2, 2), -1.0)], g, 1.0, 10.0)["rmse"] == pytest.approx(4.0)


def test_undefined_metrics_are_errors_not_nan():
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_metrics([np.zeros((2, 2), int)], [np.full((2, 2), IGNORE_INDEX)], 3)
    with pytest.raises(ValueError, match="no valid depth pixel"):
        depth_metrics([np.ones((2, 2))], [np.zeros((2, 2))], 1e-3, 10.0)
