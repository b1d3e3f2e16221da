"""Dense metrics, with the conventions of the toolboxes DINOv2's dense numbers come from.

Segmentation (mmsegmentation's `mIoU`): intersections and unions are summed over the whole test set
per class, IoU = I / U per class, mIoU = the mean over classes that occur in the ground truth or the
prediction (a class absent from both has no IoU and is left out, as mmseg's nanmean does). Pixel
accuracy (`aAcc`) = correct labelled pixels / labelled pixels. Pixels labelled 255 count nowhere.

Depth (the Monocular-Depth-Estimation-Toolbox DINOv2 used): per image over its valid pixels
(ground truth > 0), RMSE = sqrt(mean((p − g)²)), abs-rel = mean(|p − g| / g), δ₁ = the fraction with
max(p/g, g/p) < 1.25; the set's figure is the mean over images. Predictions are clamped to
[min_depth, max_depth] first, as that toolbox does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dinoflow.evaluation.dense_data import IGNORE_INDEX


@dataclass
class SegmentationCounts:
    """Running per-class sums over a test set (float64: exact for any realistic pixel count)."""

    num_classes: int
    intersection: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    correct: float = 0.0
    labelled: float = 0.0

    def __post_init__(self) -> None:
        self.intersection = np.zeros(self.num_classes, np.float64)
        self.union = np.zeros(self.num_classes, np.float64)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        """pred, target: int [H, W] of one image (target 255 = ignore)."""
        keep = target != IGNORE_INDEX
        p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
        c = self.num_classes
        area_p = np.bincount(p, minlength=c)[:c]
        area_t = np.bincount(t, minlength=c)[:c]
        inter = np.bincount(t[p == t], minlength=c)[:c]
        self.intersection += inter
        self.union += area_p + area_t - inter
        self.correct += float((p == t).sum())
        self.labelled += float(keep.sum())

    def miou(self) -> float:
        present = self.union > 0
        if not present.any():
            raise ValueError("no labelled pixel in the test set: mIoU is undefined")
        return float((self.intersection[present] / self.union[present]).mean())

    def per_class_iou(self) -> list[float | None]:
        return [float(i / u) if u > 0 else None for i, u in zip(self.intersection, self.union)]

    def pixel_accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else float("nan")


def segmentation_metrics(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int) -> dict[str, float]:
    """{"miou", "pixel_acc"} of predicted class maps against targets (lists of [H, W] int arrays)."""
    counts = SegmentationCounts(num_classes)
    for p, t in zip(preds, targets):
        counts.add(p, t)
    return {"miou": counts.miou(), "pixel_acc": counts.pixel_accuracy()}


def depth_metrics(
    preds: list[np.ndarray], targets: list[np.ndarray], min_depth: float, max_depth: float
) -> dict[str, float]:
    """{"rmse", "abs_rel", "delta1"}: means over images of per-image figures on valid pixels (gt > 0)."""
    rmse, abs_rel, delta1 = [], [], []
    for p, g in zip(preds, targets):
        valid = g > 0
        if not valid.any():
            continue
        pv = np.clip(p[valid].astype(np.float64), min_depth, max_depth)
        gv = g[valid].astype(np.float64)
        rmse.append(np.sqrt(np.mean((pv - gv) ** 2)))
        abs_rel.append(np.mean(np.abs(pv - gv) / gv))
        delta1.append(np.mean(np.maximum(pv / gv, gv / pv) < 1.25))
    if not rmse:
        raise ValueError("no valid depth pixel in the test set: the metrics are undefined")
    return {"rmse": float(np.mean(rmse)), "abs_rel": float(np.mean(abs_rel)), "delta1": float(np.mean(delta1))}
