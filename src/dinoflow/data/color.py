"""Batched photometric ops with one parameter per image, for float RGB in [0, 1].

Every function takes `x` float `[N, 3, H, W]` and a per-image parameter tensor `[N]` (on
`x`'s device), and returns a new `[N, 3, H, W]` tensor. The maths follows torchvision's
tensor functional ops (the ones the DINOv2 recipe calls through PIL): blend-and-clamp for
brightness / contrast / saturation, an HSV round trip for hue, ITU-R 601 luma for grey.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as PIL's "L" conversion and torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of `x` [N,3,H,W] → [N,1,H,W]."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·x + (1 − factor)·other, clamped to [0, 1] (torchvision's `_blend`)."""
    f = _per_image(factor)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by `factor` [N] (blend with black)."""
    return (x * _per_image(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma (one scalar per image) by `factor` [N]."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel luma by `factor` [N] (0 → grey, 1 → unchanged)."""
    return _blend(x, rgb_to_grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` [N] (fraction of a turn, in [−0.5, 0.5]) through HSV.

    HSV keeps V = max and S·V = max − min, so only the hue angle is recomputed; grey pixels
    (max = min) come out unchanged.
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    delta = maxc - x.amin(dim=1)
    inv = 1.0 / torch.where(delta > 0, delta, torch.ones_like(delta))
    # Hue in sixths of a turn, in [−1, 5); a grey pixel takes the first branch with g − b = 0.
    h6 = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r) + 2.0 * delta, (r - g) + 4.0 * delta)) * inv
    h6 = h6 + 6.0 * shift.view(-1, 1, 1)
    # Branch-free HSV → RGB: channel n ∈ {5, 3, 1} ↔ {R, G, B}.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - delta * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Replace `x` [N,3,H,W] by its luma repeated on three channels."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert every value ≥ `threshold` (PIL / torchvision semantics)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def blur_kernel_size(size: int, requested: int) -> int:
    """The kernel side actually used on a `size`-pixel crop: `requested`, or the largest odd
    number ≤ `size` when the crop is smaller (reflect padding needs pad < side)."""
    k = min(requested, size if size % 2 else size - 1)
    return max(k, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur, one σ per image, reflect padding (torchvision's choice).

    x: [N, C, H, W]; sigma: [N] (pixels); kernel_size: odd, ≤ min(H, W).
    The kernel is exp(−t²/2σ²) on t ∈ {−(k−1)/2 … (k−1)/2}, normalised to sum 1.
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    n, c, h, w = x.shape
    if kernel_size == 1 or n == 0:
        return x.clone()
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kern = torch.exp(-0.5 * (t.view(1, -1) / sigma.to(x.dtype).view(-1, 1)) ** 2)
    kern = kern / kern.sum(dim=1, keepdim=True)  # [N, k]
    weight = kern.repeat_interleave(c, dim=0)  # [N·C, k]: one kernel per (image, channel)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)
