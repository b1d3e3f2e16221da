"""Evaluation transform: resize shorter side, centre crop, normalise; grey → 3 channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinoflow.evaluation.transform import IMAGENET_MEAN, IMAGENET_STD, eval_transform


def test_identity_size_only_normalises():
    x = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    out = eval_transform(x, 28, 1.0)
    assert out.shape == (2, 3, 28, 28)
    expect = (x.float() / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    torch.testing.assert_close(out[:, 1], expect)
    raw = eval_transform(x, 28, 1.0, normalize=False, channels=1)
    torch.testing.assert_close(raw[:, 0], x.float() / 255)


def test_resize_then_centre_crop_like_the_official_transform():
    # 40x80 image: shorter side → round(16 * 1.25) = 20 (long side 40), centre crop 16.
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, 40:] = 255  # right half white
    out = eval_transform([img], 16, 1.25, normalize=False)
    assert out.shape == (1, 3, 16, 16)
    # After resize the image is 20x40 and the crop spans columns 12..27: the edge sits at column 8.
    assert out[0, 0, 8, :6].max() < 0.05 and out[0, 0, 8, 10:].min() > 0.95
    assert out.min() >= 0 and out.max() <= 1


def test_mixed_inputs_and_sizes():
    pil = Image.fromarray(np.full((30, 20), 128, dtype=np.uint8))
    arr = np.full((50, 60, 3), 200, dtype=np.uint8)
    out = eval_transform([pil, arr], 14, 1.0, normalize=False)
    assert out.shape == (2, 3, 14, 14)
    torch.testing.assert_close(out[0], torch.full((3, 14, 14), 128 / 255))
    torch.testing.assert_close(out[1], torch.full((3, 14, 14), 200 / 255))


def test_ratio_below_one_is_refused():
    with pytest.raises(ValueError, match="resize_ratio"):
        eval_transform(torch.zeros(1, 28, 28, dtype=torch.uint8), 28, 0.5)
