"""The demo's dense evaluation sets, built from the held-out MNIST digits (never in the pretraining pool).

Both are synthetic and say so: they exist to show the dense protocol running on the demo's data, not
to stand in for ADE20k or NYU-Depth v2.

- `demo_segmentation`: 56×56 images of 2×2 cells of 28 px (the demo models' training size, each cell
  4×4 patches of 7 px), 1–2 cells holding a held-out digit and the others empty. Class of a pixel:
  1 + the digit of its cell, 0 in an empty cell. Whole cells are labelled, not strokes: a linear
  probe on 7-px patch tokens cannot draw 2-px strokes, and what is measured is whether the tokens
  know which digit they belong to. (Strokes at random scales and places were tried first: every
  model, pixels included, stayed at the all-background mIoU of about 0.12.)
- `demo_depth`: a ground plane seen in perspective from a camera whose horizon is just above the
  image: depth z(y) = 28 / (y + 3) metres at row y (9.3 m at the top, 0.48 m at the bottom), textured
  with stripes every 0.5 m of ground (so they crowd towards the horizon), and 1–2 held-out digits
  standing on it as upright planes: a digit whose foot is on row y is at depth z(y) and drawn at a
  side of 12 / z(y) px (clipped to [7, 40]), near digits large and far ones small.

Train and test mosaics draw their digits from disjoint halves of the held-out set (seeded).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dinoflow.demo import sources as demo_sources
from dinoflow.evaluation.dense_data import DenseImages, DenseSplit

SIDE = 56
CELL = 28
N_TRAIN, N_TEST = 240, 80


def _resize(digit: np.ndarray, side: int) -> np.ndarray:
    x = torch.from_numpy(digit.astype(np.float32))[None, None]
    y = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return y[0, 0].clamp(0, 255).numpy()


def _mosaic(digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    canvas = np.zeros((SIDE, SIDE), np.uint8)
    target = np.zeros((SIDE, SIDE), np.int64)
    cells = [(r, c) for r in range(0, SIDE, CELL) for c in range(0, SIDE, CELL)]
    for k in rng.choice(len(cells), size=int(rng.integers(1, 3)), replace=False):
        i = int(rng.integers(len(digits)))
        top, left = cells[int(k)]
        canvas[top : top + CELL, left : left + CELL] = digits[i]
        target[top : top + CELL, left : left + CELL] = 1 + int(labels[i])
    return canvas, target


def ground_depth(rows: np.ndarray) -> np.ndarray:
    """Depth in metres of the ground at image row y: 28 / (y + 3)."""
    return 28.0 / (rows.astype(np.float32) + 3.0)


def _scene(digits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    z_rows = ground_depth(np.arange(SIDE))
    depth = np.repeat(z_rows[:, None], SIDE, axis=1)
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * z_rows / 0.5)
    canvas = np.repeat((40.0 + 50.0 * stripes)[:, None], SIDE, axis=1).astype(np.float32)
    feet = np.sort(rng.integers(12, SIDE, size=int(rng.integers(1, 3))))  # far first: near digits cover far ones
    for foot in feet:
        z = float(z_rows[foot])
        side = int(np.clip(round(12.0 / z), 7, 40))
        top = max(0, foot + 1 - side)
        ink = _resize(digits[int(rng.integers(len(digits)))], side)[side - (foot + 1 - top) :]
        left = int(rng.integers(0, SIDE - side + 1))
        win = (slice(top, foot + 1), slice(left, left + side))
        on = ink >= 64
        canvas[win][on] = np.maximum(ink[on], 160.0)
        depth[win][on] = z
    return canvas.round().astype(np.uint8), depth.astype(np.float32)


def _held_out_halves(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    _tx, _ty, vx, vy = demo_sources.mnist_split()
    order = np.random.default_rng(seed).permutation(len(vx))
    half = len(order) // 2
    a, b = order[:half], order[half:]
    return (vx[a], vy[a]), (vx[b], vy[b])


def demo_segmentation(name: str, seed: int = 0) -> DenseSplit:
    """The digit-mosaic segmentation set: 11 classes (background, digits 0–9)."""
    (tx, ty), (vx, vy) = _held_out_halves(seed)
    out = []
    for x, y, n, s in ((tx, ty, N_TRAIN, seed), (vx, vy, N_TEST, seed + 1)):
        rng = np.random.default_rng(s)
        pairs = [_mosaic(x, y, rng) for _ in range(n)]
        out.append(DenseImages([p[0] for p in pairs], [p[1] for p in pairs]))
    return DenseSplit(name, "segmentation", out[0], out[1], ["background", *[str(d) for d in range(10)]])


def demo_depth(name: str, seed: int = 0) -> DenseSplit:
    """The ground-plane-and-standing-digits depth set (metres, every pixel valid)."""
    (tx, _), (vx, _) = _held_out_halves(seed)
    out = []
    for x, n, s in ((tx, N_TRAIN, seed), (vx, N_TEST, seed + 1)):
        rng = np.random.default_rng(s)
        pairs = [_scene(x, rng) for _ in range(n)]
        out.append(DenseImages([p[0] for p in pairs], [p[1] for p in pairs]))
    return DenseSplit(name, "depth", out[0], out[1])
