"""Synthetic embedding fixtures shared by the curation tests."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mixture(sizes: list[int], dim: int = 32, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around len(sizes) random centres: (x [sum(sizes), dim], component label [N])."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(len(sizes), dim)))
    xs, ys = [], []
    for c, n in enumerate(sizes):
        xs.append(centres[c] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim))
        ys.append(np.full(n, c))
    return unit(np.concatenate(xs)), np.concatenate(ys)
