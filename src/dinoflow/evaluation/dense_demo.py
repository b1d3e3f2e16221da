"""The demo's dense evaluation sets, built from the held-out MNIST digits (never in the pretraining pool).

Both are synthetic and say so: they exist to show the dense protocol running on the demo's data, not
to stand in for ADE20k or NYU-Depth v2.

- `demo_segmentation`: 56×56 images of 2×2 cells of 28 px (the demo models' training size, each cell
  4×4 patches of 7 px), 1–2 cells holding a held-out digit and the others empty. Class of a pixel:
  1 + the digit of its cell, 0 in an empty cell. Whole cells are labelled, not strokes: a linear
  probe on 7-px patch tokens cannot draw 2-px strokes, and what is measured is whether the tokens
  know which digit they belong to. (Strokes at random scales and places were tried first: every
  model, pixels included, stayed at the all-background mIoU of about 0.12.)
- `demo_depth`: a ground plane seen by a camera whose pitch changes from image to image: the horizon
  falls on row h, drawn per image from [-12, 16) (above the image or inside it), and the ground at
  row y > h is at depth z = 28 / (y − h) metres. The ground is textured with stripes every 0.5 m (so
  they crowd towards the horizon), the sky above it is a flat bright grey, and 1–2 held-out digits
  stand on the ground as upright planes: a digit whose foot is on row y is at depth z(y) and drawn
  at a side of 12 / z px (clipped to [7, 40]). Like a real range sensor the depth map has a range:
  the sky and ground beyond `MAX_RANGE` are invalid (0) and not scored. The pitch is what makes
  it a depth task and not a position task: with a fixed horizon, depth is a function of the row
  alone, and a probe on any features that keep their position embedding (the random-init
  baseline's) reads it off without looking at the image; here the depth of a row has to be read
  from what is drawn on it (stripe spacing, where the horizon is, digit sizes).

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
HORIZON_ROWS = (-12.0, 16.0)  # the horizon's row: from well above the image to its upper third
MAX_RANGE = 10.0  # metres: the sensor's range; farther (and the sky) is invalid
SKY = 200.0


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


def ground_depth(rows: np.ndarray, horizon: float) -> np.ndarray:
    """Depth in metres of the ground at image rows y below the horizon row h: 28 / (y − h); 0 (invalid)
    at and above the horizon and beyond `MAX_RANGE`."""
    below = rows.astype(np.float32) - np.float32(horizon)
    z = 28.0 / np.maximum(below, 1e-6)
    return np.where((below > 0) & (z <= MAX_RANGE), z, 0.0).astype(np.float32)


def _scene(digits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    horizon = float(rng.uniform(*HORIZON_ROWS))
    rows = np.arange(SIDE)
    z_rows = ground_depth(rows, horizon)
    depth = np.repeat(z_rows[:, None], SIDE, axis=1)
    ground = rows > horizon
    z_ground = 28.0 / np.maximum(rows - horizon, 1e-6)  # drawn to the horizon, measured to MAX_RANGE
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * z_ground / 0.5)
    shade = np.where(ground, 40.0 + 50.0 * stripes, SKY)
    canvas = np.repeat(shade[:, None], SIDE, axis=1).astype(np.float32)
    lowest = max(12, int(np.floor(horizon + 28.0 / MAX_RANGE)) + 1)  # a foot within range
    feet = np.sort(rng.integers(lowest, SIDE, size=int(rng.integers(1, 3))))  # far first: near digits cover far
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
    """The tilted-ground-plane-and-standing-digits depth set (metres; 0 = out of range, not scored)."""
    (tx, _), (vx, _) = _held_out_halves(seed)
    out = []
    for x, n, s in ((tx, N_TRAIN, seed), (vx, N_TEST, seed + 1)):
        rng = np.random.default_rng(s)
        pairs = [_scene(x, rng) for _ in range(n)]
        out.append(DenseImages([p[0] for p in pairs], [p[1] for p in pairs]))
    return DenseSplit(name, "depth", out[0], out[1])
