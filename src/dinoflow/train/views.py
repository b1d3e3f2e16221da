"""What each training step sees: multi-crop views of its batch (+ iBOT masks), and the seed all
of a step's randomness derives from.

Both objectives build a `Views`; the loop binds it to its rank, hands `prepare` to the data-loader
workers and calls `finish` on each prepared batch.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from dinoflow.config import CropConfig, MaskConfig
from dinoflow.data.augment import MultiCropAugment
from dinoflow.data.masking import collate_masks


def step_seed(seed: int, step: int, rank: int) -> int:
    """One 63-bit seed per (run seed, step, rank): all per-step randomness derives from it."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


class Views:
    """Multi-crop views of one batch (+ iBOT masks when masking is on), in two halves:

    `prepare(images, step)` runs in a data-loader worker (CPU): the iBOT masks, and the crops
    too when `crops_on_host` (training on a CPU); `finish(prepared, step, device)` runs in
    the loop: it moves everything to the device and, when the crops are not made yet, crops
    there (on a GPU, where the batched augmentation is fast). Either way each step's
    randomness derives from (seed, step, rank) alone, so the split never changes the numbers
    on a given device.
    """

    def __init__(self, crops: CropConfig, masks: MaskConfig | None, patch_size: int, seed: int):
        self.aug = MultiCropAugment(crops)
        self.crops, self.mask_cfg, self.patch_size, self.seed = crops, masks, patch_size, seed
        self.rank, self.crops_on_host = 0, False

    def bind(self, rank: int, crops_on_host: bool) -> "Views":
        self.rank, self.crops_on_host = rank, crops_on_host
        return self

    def _crops(self, images, seed: int, device: torch.device) -> dict[str, Any]:
        out = self.aug(images, generator=torch.Generator(device=device).manual_seed(seed))
        return {
            "global_crops": out["global_crops"],
            "local_crops": out["local_crops"] if self.crops.n_local > 0 else None,
        }

    def prepare(self, images, step: int) -> dict[str, Any]:
        """uint8 images [B,3,H,W] (or a list of [3,H,W]) on the CPU → masks (bool [2B,N],
        mask_indices [M], masks_weight [M], n_masked_patches [1]) and either the crops or the images."""
        s = step_seed(self.seed, step, self.rank)
        out: dict[str, Any] = {}
        if self.mask_cfg is not None:
            grid = self.crops.global_size // self.patch_size
            m = collate_masks(self.crops.n_global * len(images), (grid, grid), self.mask_cfg, random.Random(s))
            out.update(
                masks=m["masks"],
                mask_indices=m["mask_indices_list"],
                masks_weight=m["masks_weight"],
                n_masked_patches=m["n_masked_patches"],
            )
        if self.crops_on_host:
            out.update(self._crops(images, s, torch.device("cpu")))
        else:
            out["images"] = images
        return out

    def finish(self, prepared: dict[str, Any], step: int, device: torch.device) -> dict[str, Any]:
        """→ global_crops [n_global·B,3,G,G], local_crops [nL·B,3,L,L] | None (+ the masks) on `device`."""

        def move(x):
            if isinstance(x, list):
                return [move(t) for t in x]
            return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x

        views = {k: move(v) for k, v in prepared.items()}
        if "images" in views:
            views.update(self._crops(views.pop("images"), step_seed(self.seed, step, self.rank), device))
        views.setdefault("local_crops", None)
        return views

    def __call__(self, images: torch.Tensor, step: int, rank: int) -> dict[str, Any]:
        """Both halves at once on the images' device: uint8 [B,3,S,S] → the views."""
        self.rank = rank
        host = self.crops_on_host
        self.crops_on_host = False
        try:
            return self.finish(self.prepare(images, step), step, images.device)
        finally:
            self.crops_on_host = host
