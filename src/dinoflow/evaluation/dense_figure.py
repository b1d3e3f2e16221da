"""The dense evaluation's picture: test images, their ground truth and each model's prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dinoflow.evaluation.dense_data import IGNORE_INDEX
from dinoflow.evaluation.report import _display, _save_figure


def save_dense_png(
    path: str | Path,
    images: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    preds_by_model: Mapping[str, Sequence[np.ndarray]],
    task: str,
    title: str,
) -> Path:
    """Rows: the images, the ground truth, then each model's prediction (same colour scale as the truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = 2 + len(preds_by_model)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n + 1.0, 1.6 * rows + 0.4), squeeze=False)
    if task == "segmentation":
        kw: dict[str, Any] = {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}

        def show(a: np.ndarray) -> np.ndarray:
            return np.ma.masked_equal(a, IGNORE_INDEX)
    else:
        valid = np.concatenate([t[t > 0] for t in truth]) if truth else np.zeros(1)
        kw = {"cmap": "magma_r", "vmin": float(valid.min()), "vmax": float(valid.max())}

        def show(a: np.ndarray) -> np.ndarray:
            return np.ma.masked_equal(a, 0)

    for j in range(n):
        axes[0][j].imshow(_display(images[j]), cmap="gray" if images[j].ndim == 2 else None)
        axes[1][j].imshow(show(truth[j]), **kw)
        for i, preds in enumerate(preds_by_model.values(), start=2):
            axes[i][j].imshow(show(preds[j]), **kw)
    for i, label in enumerate(["image", "truth", *preds_by_model]):
        axes[i][0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return _save_figure(fig, path)
