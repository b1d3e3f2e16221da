"""iBOT block masking (BEiT-style), deterministic under an explicit `random.Random`.

`MaskingGenerator` draws rectangular blocks (area ≥ `min_num_patches`, log-uniform aspect ratio in
[min_aspect, max_aspect]) until the requested number of patches is masked or a block cannot be
placed. `collate_masks` assigns masks to a batch of global crops the way DINOv2's
`collate_data_and_cast` does: int(n · p) crops get a mask whose ratio is drawn from the i-th of
n·p equal slices of [min, max] (stratified), the others none, and the list is shuffled.

With `rng` seeded like Python's global `random`, the draws happen in the same order as in the
official code, so the same seed gives the same masks.
"""

from __future__ import annotations

import math
import random

import torch

from dinoflow.config import MaskConfig


class MaskingGenerator:
    """Block mask sampler over an (h, w) patch grid.

    Args:
        input_size: grid side, or (height, width) in patches.
        num_masking_patches: default target for `__call__` when none is given (optional).
        min_num_patches: smallest block area.
        max_num_patches: largest block area; defaults to `num_masking_patches`, or half the grid.
        min_aspect: smallest block aspect (height / width).
        max_aspect: largest aspect; defaults to 1 / min_aspect.
        rng: the random source; a `random.Random(0)` when omitted (deterministic by default).
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = (int(v) for v in input_size)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if min_aspect <= 0 or (max_aspect is not None and max_aspect < min_aspect):
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        if max_num_patches is None:
            max_num_patches = num_masking_patches if num_masking_patches is not None else 0.5 * self.num_patches
        self.max_num_patches = max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = rng if rng is not None else random.Random(0)

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator({self.height}x{self.width}, blocks of {self.min_num_patches}..{self.max_num_patches} "
            f"patches, log-aspect {self.log_aspect_ratio[0]:.3f}..{self.log_aspect_ratio[1]:.3f})"
        )

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _add_block(self, mask: torch.Tensor, max_mask_patches: float, rng: random.Random) -> int:
        """Try up to 10 blocks; mask the first that adds 1..max_mask_patches new patches. Returns #added."""
        for _ in range(10):
            target_area = rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            # strictly smaller than the grid, as in the reference: no full-width/height block
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                added = h * w - int(block.sum())
                if 0 < added <= max_mask_patches:
                    block.fill_(True)
                    return added
        return 0

    def __call__(self, num_masking_patches: int | None = 0, rng: random.Random | None = None) -> torch.Tensor:
        """Mask about `num_masking_patches` patches (never more; fewer if blocks stop fitting).

        Args:
            num_masking_patches: target count (0 → empty mask; None → the constructor's target).
            rng: overrides the generator's own random source for this call.
        Returns:
            [height, width] bool mask.
        """
        rng = self.rng if rng is None else rng
        if num_masking_patches is None:
            num_masking_patches = self.num_masking_patches or 0
        mask = torch.zeros(self.get_shape(), dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, budget, rng)
            if added == 0:
                break
            count += added
        return mask


def collate_masks(
    n_images: int,
    grid_size: int | tuple[int, int],
    mask_cfg: MaskConfig,
    rng: random.Random,
) -> dict[str, torch.Tensor | int]:
    """Masks for a batch of global crops, with DINOv2's stratified per-image ratios.

    Args:
        n_images: number of global-crop images (crop-major: 2 × batch for 2 global crops).
        grid_size: patch grid side (or (h, w)) of a global crop.
        mask_cfg: probability, ratio range, block constraints.
        rng: the random source (the same seed gives the same masks).
    Returns:
        masks: bool [n_images, h·w]; mask_indices_list: long [M] flat indices of masked tokens in
        [n_images·h·w]; masks_weight: float [M], 1 / (#masked in that token's image);
        n_masked_patches: long [1] = M; upperbound: int ≥ M (sum over masked images of
        int(h·w · slice max)), the size of padded token buffers.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    n_tokens = h * w
    generator = MaskingGenerator(
        (h, w),
        min_num_patches=mask_cfg.min_num_patches,
        max_num_patches=mask_cfg.max_num_patches_ratio * n_tokens,
        min_aspect=mask_cfg.min_aspect,
        max_aspect=mask_cfg.max_aspect,
        rng=rng,
    )
    n_masked_images = int(n_images * mask_cfg.mask_sample_probability)
    # float32 slice edges and ratio arithmetic, like the reference, so that int() truncates alike
    edges = torch.linspace(*mask_cfg.mask_ratio_min_max, n_masked_images + 1)
    masks: list[torch.Tensor] = []
    upperbound = 0
    for i in range(n_masked_images):
        low, high = edges[i], edges[i + 1]
        ratio = low + (high - low) * rng.random()  # = rng.uniform(low, high)
        masks.append(generator(int(n_tokens * ratio), rng=rng))
        upperbound += int(n_tokens * high)
    masks.extend(torch.zeros(h, w, dtype=torch.bool) for _ in range(n_images - n_masked_images))
    rng.shuffle(masks)

    collated = torch.stack(masks).flatten(1) if masks else torch.zeros(0, n_tokens, dtype=torch.bool)
    mask_indices_list = collated.flatten().nonzero().flatten()
    per_image_weight = 1.0 / collated.sum(-1).clamp(min=1.0)
    masks_weight = per_image_weight.unsqueeze(-1).expand_as(collated)[collated]
    return {
        "masks": collated,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.full((1,), mask_indices_list.shape[0], dtype=torch.long),
        "upperbound": upperbound,
    }
