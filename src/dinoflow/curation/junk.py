"""Cheap per-image junk guards, applied before embedding.

An image dropped here gets manifest status `junk` with one of these details:
- `too_small`: shorter side below `min_side` pixels (icons, tracking pixels);
- `near_constant`: grey-level standard deviation below `min_std` (blank or single-colour frames);
- `noise`: lag-1 spatial autocorrelation below `min_autocorr`. Photographs, scans and drawings
  have strongly correlated neighbouring pixels (typically > 0.5); uniform or salt-and-pepper
  noise, broken decodes and random bytes rendered as pixels have ~0.

Junk that looks structured (rendered text, logos) passes these guards; retrieval from seeds is
what removes it (it lands in clusters no seed resembles).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

JUNK_DETAILS = ("too_small", "near_constant", "noise")


def lag1_autocorrelation(grey: np.ndarray) -> float:
    """Mean of the horizontal and vertical lag-1 autocorrelations of a grey image [H, W] (0 for a constant image)."""
    a = grey.astype(np.float64)
    a = a - a.mean()
    var = float((a * a).mean())
    if var <= 0:
        return 0.0
    parts = []
    if a.shape[1] > 1:
        parts.append(float((a[:, 1:] * a[:, :-1]).mean()) / var)
    if a.shape[0] > 1:
        parts.append(float((a[1:, :] * a[:-1, :]).mean()) / var)
    return float(np.mean(parts)) if parts else 0.0


def junk_reason(img: Image.Image, *, min_side: int, min_std: float, min_autocorr: float) -> str | None:
    """The first junk guard `img` fails (a name from JUNK_DETAILS), or None when it looks like a real image."""
    if min(img.size) < min_side:
        return "too_small"
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    if float(grey.std()) < min_std:
        return "near_constant"
    if min_autocorr > -1 and lag1_autocorrelation(grey) < min_autocorr:
        return "noise"
    return None
