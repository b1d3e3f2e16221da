"""Block masking and batch mask collation: determinism, stratified ratios, block constraints."""

import random

import pytest
import torch

from dinoflow.config import MaskConfig
from dinoflow.data.masking import MaskingGenerator, collate_masks


def _single_block(gen: MaskingGenerator, budget: float, rng: random.Random) -> tuple[int, int] | None:
    """Place one block on an empty grid; return its (height, width) after checking it is a rectangle."""
    mask = torch.zeros(gen.get_shape(), dtype=torch.bool)
    added = gen._add_block(mask, budget, rng)
    if added == 0:
        return None
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert h * w == added == int(mask.sum()), "a block is one filled rectangle"
    return h, w


def test_same_seed_same_masks_and_different_seed_differs():
    cfg = MaskConfig()
    a = collate_masks(16, 14, cfg, random.Random(7))
    b = collate_masks(16, 14, cfg, random.Random(7))
    c = collate_masks(16, 14, cfg, random.Random(8))
    for key in ("masks", "mask_indices_list", "masks_weight", "n_masked_patches"):
        assert torch.equal(a[key], b[key]), key
    assert a["upperbound"] == b["upperbound"]
    assert not torch.equal(a["masks"], c["masks"])


def test_generator_is_deterministic_under_its_rng():
    m1 = MaskingGenerator(10, max_num_patches=50, rng=random.Random(1))(40)
    m2 = MaskingGenerator(10, max_num_patches=50, rng=random.Random(1))(40)
    assert torch.equal(m1, m2) and m1.dtype == torch.bool and m1.shape == (10, 10)
    assert int(MaskingGenerator(10)(0).sum()) == 0


def test_outputs_are_consistent_with_each_other():
    out = collate_masks(12, (6, 8), MaskConfig(), random.Random(0))
    masks = out["masks"]
    assert masks.shape == (12, 48) and masks.dtype == torch.bool
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    m = int(out["n_masked_patches"])
    assert out["n_masked_patches"].dtype == torch.long and m == int(masks.sum())
    assert out["masks_weight"].shape == (m,)
    # every masked token carries 1 / (masked tokens of its image): weights sum to #masked images
    image_of_token = out["mask_indices_list"] // 48
    counts = masks.sum(1)
    assert torch.allclose(out["masks_weight"], 1.0 / counts[image_of_token].float())
    assert torch.isclose(out["masks_weight"].sum(), (counts > 0).sum().float())
    assert out["upperbound"] >= m


@pytest.mark.parametrize("n_images,prob", [(16, 0.5), (10, 0.3), (8, 1.0), (8, 0.0)])
def test_stratified_ratios_and_share_of_masked_images(n_images, prob):
    grid = 14
    n_tokens = grid * grid
    lo, hi = 0.1, 0.5
    cfg = MaskConfig(mask_sample_probability=prob, mask_ratio_min_max=(lo, hi))
    n_masked = int(n_images * prob)
    edges = [lo + (hi - lo) * i / n_masked for i in range(n_masked + 1)] if n_masked else []
    rank_sums = torch.zeros(n_masked)
    n_trials = 30
    for seed in range(n_trials):
        out = collate_masks(n_images, grid, cfg, random.Random(seed))
        counts = out["masks"].sum(1)
        assert int((counts == 0).sum()) >= n_images - n_masked
        assert int((counts > 0).sum()) <= n_masked
        assert out["upperbound"] == sum(int(n_tokens * torch.tensor(e, dtype=torch.float32)) for e in edges[1:])
        # the i-th smallest count never exceeds the i-th slice's top: one image per slice
        ranked = torch.sort(counts).values[n_images - n_masked :]
        for i in range(n_masked):
            assert ranked[i] <= int(n_tokens * edges[i + 1])
        rank_sums += ranked.float()
    # and it reaches into its slice (blocks that stop fitting may leave it a little short)
    for i in range(n_masked):
        assert rank_sums[i] / n_trials >= 0.9 * n_tokens * edges[i]


def test_never_more_than_the_max_ratio_per_image():
    cfg = MaskConfig(mask_sample_probability=1.0, mask_ratio_min_max=(0.3, 0.3))
    for seed in range(10):
        counts = collate_masks(8, 10, cfg, random.Random(seed))["masks"].sum(1)
        assert (counts <= 30).all() and (counts > 0).all()


def test_square_blocks_respect_the_minimum_area():
    gen = MaskingGenerator(14, min_num_patches=9, max_num_patches=40, min_aspect=1.0)
    rng = random.Random(0)
    shapes = [s for s in (_single_block(gen, 40, rng) for _ in range(200)) if s is not None]
    assert len(shapes) > 150
    assert all(h == w and h * w >= 9 and h * w <= 40 for h, w in shapes)


def test_aspect_range_sets_block_orientation():
    rng = random.Random(1)
    tall = MaskingGenerator(16, min_num_patches=8, max_num_patches=40, min_aspect=2.0, max_aspect=4.0)
    wide = MaskingGenerator(16, min_num_patches=8, max_num_patches=40, min_aspect=0.25, max_aspect=0.5)
    tall_shapes = [s for s in (_single_block(tall, 40, rng) for _ in range(200)) if s]
    wide_shapes = [s for s in (_single_block(wide, 40, rng) for _ in range(200)) if s]
    assert tall_shapes and wide_shapes
    assert all(h > w for h, w in tall_shapes)  # aspect = height / width
    assert all(w > h for h, w in wide_shapes)
    # log-uniform aspect in [0.3, 1/0.3] by default: symmetric, so both orientations occur
    default = MaskingGenerator(16, max_num_patches=60)
    shapes = [s for s in (_single_block(default, 60, rng) for _ in range(300)) if s]
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


def test_blocks_never_exceed_the_budget_or_span_the_grid():
    gen = MaskingGenerator(8, min_num_patches=4, max_num_patches=12)
    rng = random.Random(2)
    for _ in range(300):
        s = _single_block(gen, 12, rng)
        if s:
            h, w = s
            assert h * w <= 12 and h < 8 and w < 8


def test_default_block_cap_is_half_the_grid():
    gen = MaskingGenerator((6, 10))
    assert gen.max_num_patches == 30
    assert MaskingGenerator(6, num_masking_patches=7).max_num_patches == 7


def test_invalid_ranges_are_rejected():
    with pytest.raises(ValueError, match="min <= max"):
        MaskConfig(mask_ratio_min_max=(0.6, 0.2))
    with pytest.raises(ValueError, match="min_aspect"):
        MaskingGenerator(8, min_aspect=0.5, max_aspect=0.2)
