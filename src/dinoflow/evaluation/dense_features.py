"""Frozen patch-token grids for the dense probes (and the raw-pixel grid of the baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dinoflow.evaluation.features import _autocast, iter_batches
from dinoflow.evaluation.transform import IMAGENET_MEAN, IMAGENET_STD, to_chw_uint8

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer


def dense_transform(images: Sequence[np.ndarray], size: int, normalize: bool = True) -> torch.Tensor:
    """Images of any sizes → float [B, 3, size, size]: the whole image resized (bicubic, no crop), in
    [0, 1], then ImageNet mean/std unless `normalize` is False. Grey images become 3 channels."""
    out = []
    for im in images:
        x = to_chw_uint8(im)[None].float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        out.append(x.clamp(0.0, 1.0))
    x = torch.cat(out)
    if normalize:
        m = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
        s = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


def grid_size(size: int, patch: int) -> int:
    """The input side actually fed: `size` rounded down to a multiple of the patch (at least one patch)."""
    return max(patch, size - size % patch)


@torch.inference_mode()
def backbone_grids(
    model: DinoVisionTransformer,
    images: Sequence[np.ndarray],
    *,
    size: int,
    with_cls: bool,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "dense features",
) -> torch.Tensor:
    """Last-block normed patch tokens as a grid [N, D, size/p, size/p], with the CLS token broadcast
    and concatenated on the channels when `with_cls` ([N, 2D, h, w], DINOv2's depth input)."""
    dev = torch.device(device)
    was_training = model.training
    model.eval().to(dev)
    side = grid_size(size, int(model.patch_size))
    out = []
    try:
        for chunk in iter_batches(list(images), batch_size, desc, progress):
            x = dense_transform(chunk, side).to(dev)
            with _autocast(dev):
                ((grid, cls),) = model.get_intermediate_layers(x, 1, reshape=True, return_class_token=True, norm=True)
            grid = grid.float()
            if with_cls:
                cls = cls.float()[:, :, None, None].expand(-1, -1, *grid.shape[-2:])
                grid = torch.cat([grid, cls], dim=1)
            out.append(grid.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def pixel_grids(images: Sequence[np.ndarray], *, size: int, patch: int) -> torch.Tensor:
    """The raw-pixel baseline on the same grid: each patch's pixels in [0, 1], flattened
    [N, 3·p·p, size/p, size/p] (no mean/std: a linear map on standardised channels learns it)."""
    side = grid_size(size, patch)
    x = dense_transform(images, side, normalize=False)
    cols = F.unfold(x, kernel_size=patch, stride=patch)  # [N, 3·p·p, h·w]
    h = side // patch
    return cols.view(len(x), -1, h, h)
