"""Photometric ops against direct per-pixel computations (colorsys, numpy)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from dinoflow.data import color


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.rand(4, 3, 6, 7, generator=torch.Generator().manual_seed(0))


def test_hue_matches_colorsys(imgs: torch.Tensor) -> None:
    shifts = torch.tensor([0.1, -0.1, 0.5, -0.37])
    out = color.adjust_hue(imgs, shifts)
    ref = np.empty(imgs.shape, dtype=np.float64)
    x = imgs.double().numpy()
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j])
                ref[n, :, i, j] = colorsys.hsv_to_rgb((h + float(shifts[n])) % 1.0, s, v)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)


def test_hue_keeps_grey_and_zero_shift_is_identity(imgs: torch.Tensor) -> None:
    grey = imgs[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(color.adjust_hue(grey, torch.full((4,), 0.3)), grey, atol=1e-6)
    assert torch.allclose(color.adjust_hue(imgs, torch.zeros(4)), imgs, atol=1e-6)


def test_blend_ops_follow_their_formulas(imgs: torch.Tensor) -> None:
    f = torch.tensor([0.6, 1.0, 1.4, 0.0])
    luma = 0.299 * imgs[:, 0] + 0.587 * imgs[:, 1] + 0.114 * imgs[:, 2]
    fv = f.view(-1, 1, 1, 1)
    torch.testing.assert_close(color.adjust_brightness(imgs, f), (imgs * fv).clamp(0, 1))
    mean = luma.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    torch.testing.assert_close(color.adjust_contrast(imgs, f), (fv * imgs + (1 - fv) * mean).clamp(0, 1))
    torch.testing.assert_close(color.adjust_saturation(imgs, f), (fv * imgs + (1 - fv) * luma.unsqueeze(1)).clamp(0, 1))
    g = color.grayscale(imgs)
    assert g.shape == imgs.shape and torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    torch.testing.assert_close(g[:, 0], luma)


def test_solarize_threshold_is_inclusive() -> None:
    x = torch.tensor([0.0, 127 / 255, 128 / 255, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    out = color.solarize(x)[0, 0, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, 127 / 255, 1 - 128 / 255, 0.0]))


def test_gaussian_blur_matches_direct_convolution() -> None:
    x = torch.rand(3, 3, 10, 11, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 1.0, 2.0])
    k = 9
    out = color.gaussian_blur(x, sigma, k)
    t = np.arange(k) - (k - 1) / 2
    for n in range(3):
        g = np.exp(-0.5 * (t / float(sigma[n])) ** 2)
        g /= g.sum()
        kern2d = np.outer(g, g)
        padded = np.pad(x[n].double().numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
        ref = np.zeros((3, 10, 11))
        for i in range(10):
            for j in range(11):
                ref[:, i, j] = (padded[:, i : i + k, j : j + k] * kern2d).sum(axis=(1, 2))
        np.testing.assert_allclose(out[n].numpy(), ref, atol=1e-5)


def test_blur_kernel_clamped_to_crop() -> None:
    assert color.blur_kernel_size(224, 9) == 9
    assert color.blur_kernel_size(14, 9) == 9
    assert color.blur_kernel_size(8, 9) == 7
    assert color.blur_kernel_size(5, 9) == 5
    assert color.blur_kernel_size(1, 9) == 1
    with pytest.raises(ValueError, match="odd"):
        color.gaussian_blur(torch.rand(1, 3, 8, 8), torch.ones(1), 4)
