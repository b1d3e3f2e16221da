"""The classification evaluation transform, in plain torch (torchvision does not import here).

Official (`make_classification_eval_transform`): Resize(256, bicubic) of the shorter side →
CenterCrop(224) → [0, 1] → ImageNet mean/std. Here the sizes scale with the data:
resize the shorter side to round(image_size · resize_ratio), centre-crop image_size.
Grey images become 3 channels by repetition.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_chw_uint8(image: "np.ndarray | torch.Tensor | object") -> torch.Tensor:
    """A PIL image, or an array [H,W] / [H,W,C] (uint8), or a tensor [C,H,W] → uint8 tensor [C,H,W]."""
    if isinstance(image, torch.Tensor):
        t = image
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"an image tensor must be [C,H,W] or [H,W]; got {tuple(t.shape)}")
        return t.to(torch.uint8)
    if not isinstance(image, np.ndarray):  # PIL
        mode = getattr(image, "mode", None)
        if mode not in ("L", "RGB"):
            image = image.convert("RGB")  # type: ignore[attr-defined]
        image = np.array(image)  # a writable copy
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8; got {a.dtype}")
    if a.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(a))[None]
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        return torch.from_numpy(np.ascontiguousarray(a[:, :, :3])).permute(2, 0, 1)
    raise ValueError(f"an image array must be [H,W] or [H,W,C]; got {a.shape}")


def resize_size(image_size: int, resize_ratio: float) -> int:
    return int(round(image_size * resize_ratio))


def _resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """x float [B,C,H,W] → shorter side `size` (long side as torchvision: int(size · long / short))."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    # antialias matches PIL's bicubic when shrinking; bicubic overshoots, hence the clamp.
    return F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size} from {h}×{w}; resize_ratio must be >= 1")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def eval_transform(
    images: "torch.Tensor | Sequence[object]",
    image_size: int,
    resize_ratio: float = 256 / 224,
    normalize: bool = True,
    channels: int = 3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Images → float [B, channels, image_size, image_size].

    `images`: a uint8 tensor [B,H,W] / [B,C,H,W], or a sequence of PIL images / uint8 arrays /
    tensors of any sizes. `normalize=False` leaves values in [0, 1] (raw-pixel baseline);
    `channels=1` averages colour to grey (only meaningful with normalize=False).
    """
    if isinstance(images, torch.Tensor) and images.ndim in (3, 4):
        batch = images[:, None] if images.ndim == 3 else images
        groups = [batch]
    else:
        groups = [to_chw_uint8(im)[None] for im in images]
    size = resize_size(image_size, resize_ratio)
    out = []
    for g in groups:
        x = g.float().div_(255.0)
        if x.shape[1] == 4:
            x = x[:, :3]
        if channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif channels == 1 and x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        x = _center_crop(_resize_shorter(x, size), image_size)
        out.append(x)
    x = torch.cat(out) if len(out) > 1 else out[0].contiguous()
    if normalize:
        if x.shape[1] != len(mean):
            raise ValueError(f"normalising {x.shape[1]} channels with a {len(mean)}-channel mean")
        m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - m) / s
    return x
