"""MultiCropAugment: shapes, order, determinism, per-op probabilities, crop geometry, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from dinoflow.config import CropConfig
from dinoflow.data.augment import N_PARAMS, MultiCropAugment, sample_crop_boxes
from dinoflow.errors import DinoflowError

# Every op switched off, identity normalisation: the output is the bare resized crop.
BARE = dict(
    flip_p=0.0,
    color_jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=(0.0, 0.0, 0.0),
    solarize_p=0.0,
    mean=(0, 0, 0),
    std=(1, 1, 1),
)


def small_cfg(**kw) -> CropConfig:
    base = dict(global_size=8, local_size=8, n_local=2)
    base.update(kw)
    return CropConfig(**base)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(b: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen(seed))


def ramps(b: int, h: int = 24, w: int = 24) -> torch.Tensor:
    """float [b,3,h,w]: ch0 = x ramp, ch1 = y ramp, ch2 = 0.5 (pixel centre values in (0, 1))."""
    xs = (torch.arange(w) + 0.5) / w
    ys = (torch.arange(h) + 0.5) / h
    img = torch.stack([xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.full((h, w), 0.5)])
    return img.unsqueeze(0).expand(b, -1, -1, -1).contiguous()


def frac_changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row: does crop a differ from crop b anywhere?"""
    return (a != b).flatten(1).any(dim=1).float()


# ---------------------------------------------------------------- shapes and order


def test_recipe_shapes_and_dtype() -> None:
    aug = MultiCropAugment(CropConfig())
    out = aug(noise(2, h=256, w=320), gen())
    assert out["global_crops"].shape == (4, 3, 224, 224)
    assert out["local_crops"].shape == (16, 3, 98, 98)
    assert out["global_crops"].dtype == torch.float32 and out["local_crops"].dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in out.values())


def test_crop_major_order() -> None:
    values = torch.tensor([30, 90, 200], dtype=torch.uint8)
    imgs = values.view(3, 1, 1, 1).expand(3, 3, 12, 12).contiguous()
    out = MultiCropAugment(small_cfg(n_local=4, **BARE))(imgs, gen())
    for name, k in (("global_crops", 2), ("local_crops", 4)):
        crops = out[name]
        assert crops.shape[0] == 3 * k
        for c in range(k):
            for s in range(3):
                torch.testing.assert_close(crops[c * 3 + s], torch.full_like(crops[0], values[s].item() / 255))


def test_no_local_crops() -> None:
    out = MultiCropAugment(small_cfg(n_local=0))(noise(2), gen())
    assert out["global_crops"].shape == (4, 3, 8, 8)
    assert out["local_crops"].shape == (0, 3, 8, 8)


def test_one_global_crop_is_the_first_of_two_and_the_locals_do_not_move() -> None:
    # every op on, so a shifted draw would show in any of them
    two = MultiCropAugment(small_cfg(n_local=3, flip_p=0.5, grayscale_p=0.5))(noise(5), gen(3))
    one = MultiCropAugment(small_cfg(n_local=3, flip_p=0.5, grayscale_p=0.5, n_global=1))(noise(5), gen(3))
    assert one["global_crops"].shape == (5, 3, 8, 8)
    assert torch.equal(one["global_crops"], two["global_crops"][:5])
    assert torch.equal(one["local_crops"], two["local_crops"])


# ---------------------------------------------------------------- randomness


def test_same_seed_bitwise_identical_and_seeds_differ() -> None:
    aug = MultiCropAugment(small_cfg())
    x = noise(6)
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    for k in a:
        assert torch.equal(a[k], b[k])
        assert not torch.equal(a[k], c[k])


def test_sample_independent_of_the_rest_of_the_batch() -> None:
    aug = MultiCropAugment(small_cfg())
    x = noise(6)
    full, head = aug(x, gen(3)), aug(x[:2], gen(3))
    for k, n in (("global_crops", 2), ("local_crops", 2)):
        f = full[k].view(n, 6, 3, 8, 8)[:, :2]
        torch.testing.assert_close(head[k].view(n, 2, 3, 8, 8), f, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- per-op probabilities

N = 1500  # images per statistical test; tolerance ≈ 4.5 binomial σ


def tol(p: float, n: int) -> float:
    return 4.5 * math.sqrt(max(p * (1 - p), 1e-4) / n) + 1e-9


def test_flip_probability() -> None:
    cfg = small_cfg(**{**BARE, "flip_p": 0.5})
    out = MultiCropAugment(cfg)(ramps(N), gen())
    for crops in out.values():
        slope = crops[:, 0, :, -1] - crops[:, 0, :, 0]  # x ramp: rises unless mirrored
        flipped = (slope < 0).all(dim=1)
        assert bool(((slope > 0).all(dim=1) | flipped).all())
        assert abs(flipped.float().mean().item() - 0.5) < tol(0.5, crops.shape[0])


def test_grayscale_probability_and_equal_channels() -> None:
    cfg = small_cfg(**{**BARE, "grayscale_p": 0.2})
    out = MultiCropAugment(cfg)(noise(N), gen())
    for crops in out.values():
        equal = (crops[:, 0] == crops[:, 1]).flatten(1).all(1) & (crops[:, 1] == crops[:, 2]).flatten(1).all(1)
        assert abs(equal.float().mean().item() - 0.2) < tol(0.2, crops.shape[0])


def test_color_jitter_probability() -> None:
    x = noise(N)
    base = MultiCropAugment(small_cfg(**BARE))(x, gen())
    jit = MultiCropAugment(small_cfg(**{**BARE, "color_jitter_p": 0.8}))(x, gen())
    for k in base:
        f = frac_changed(base[k], jit[k]).mean().item()
        assert abs(f - 0.8) < tol(0.8, base[k].shape[0])


def test_solarize_only_on_second_global_crop() -> None:
    x = noise(N)
    base = MultiCropAugment(small_cfg(**BARE))(x, gen())
    sol = MultiCropAugment(small_cfg(**{**BARE, "solarize_p": 0.2}))(x, gen())
    changed = frac_changed(base["global_crops"], sol["global_crops"])
    assert changed[:N].sum() == 0
    assert abs(changed[N:].mean().item() - 0.2) < tol(0.2, N)
    assert torch.equal(base["local_crops"], sol["local_crops"])
    # Where applied, every value ≥ 128/255 was inverted.
    rows = changed[N:].bool()
    b, s = base["global_crops"][N:][rows], sol["global_crops"][N:][rows]
    torch.testing.assert_close(torch.where(b >= 128 / 255, 1 - b, b), s)


@pytest.mark.parametrize(
    "blur_p",
    [(1.0, 0.1, 0.5), (0.0, 0.9, 0.5)],  # dinoflow's intended values; the official code's effective ones
    ids=["intended", "official-inverted"],
)
def test_blur_probability_per_crop_type(blur_p: tuple[float, float, float]) -> None:
    x = noise(N)
    kw = {**BARE, "blur_sigma": (0.5, 2.0)}  # σ ≥ 0.5 so every blur changes an 8-px noise crop
    base = MultiCropAugment(small_cfg(**kw))(x, gen())
    blur = MultiCropAugment(small_cfg(**{**kw, "blur_p": blur_p}))(x, gen())
    g = frac_changed(base["global_crops"], blur["global_crops"])
    loc = frac_changed(base["local_crops"], blur["local_crops"])
    for measured, p in ((g[:N], blur_p[0]), (g[N:], blur_p[1]), (loc, blur_p[2])):
        assert abs(measured.mean().item() - p) < tol(p, measured.numel())

    # The change is a blur: it lowers the total variation of the noise crops.
    def tv(t: torch.Tensor) -> torch.Tensor:
        return (t[..., 1:, :] - t[..., :-1, :]).abs().flatten(1).sum(1)

    rows = loc.bool()
    assert bool((tv(blur["local_crops"][rows]) < tv(base["local_crops"][rows])).all())


# ---------------------------------------------------------------- crop geometry


def scalar_reference_box(H: int, W: int, u: list[float], scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, written with Python math on given uniforms."""
    area = H * W
    for k in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[k])
        lr = (math.log(ratio[0]), math.log(ratio[1]))
        ar = math.exp(lr[0] + (lr[1] - lr[0]) * u[10 + k])
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= W and 0 < h <= H:
            return min(int(u[20] * (H - h + 1)), H - h), min(int(u[21] * (W - w + 1)), W - w), h, w
    in_ratio = W / H
    if in_ratio < min(ratio):
        w, h = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = H, int(round(H * max(ratio)))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


@pytest.mark.parametrize(
    "hw,scale", [((256, 320), (0.32, 1.0)), ((256, 320), (0.05, 0.32)), ((30, 200), (0.5, 1.0)), ((28, 28), (0.9, 1.0))]
)
def test_box_sampler_matches_scalar_reference(hw: tuple[int, int], scale: tuple[float, float]) -> None:
    n = 400
    H, W = hw
    u = torch.rand(n, N_PARAMS, dtype=torch.float64, generator=gen(5))
    ratio = (3 / 4, 4 / 3)
    top, left, h, w = sample_crop_boxes(torch.full((n,), H), torch.full((n,), W), u, scale, ratio)
    for i in range(n):
        assert (top[i].item(), left[i].item(), h[i].item(), w[i].item()) == scalar_reference_box(
            H, W, u[i].tolist(), scale, ratio
        )
    assert bool(((top >= 0) & (left >= 0) & (top + h <= H) & (left + w <= W)).all())


def test_box_sampler_fallback_is_centred() -> None:
    # A 30×200 strip cannot hold a 3/4–4/3 box of ≥ 90% of its area: centre fallback, w = round(30·4/3).
    u = torch.rand(50, N_PARAMS, dtype=torch.float64, generator=gen(0))
    top, left, h, w = sample_crop_boxes(torch.full((50,), 30), torch.full((50,), 200), u, (0.9, 1.0))
    assert bool((h == 30).all() and (w == 40).all() and (top == 0).all() and (left == 80).all())


@pytest.mark.parametrize("which,scale", [("global_crops", (0.32, 1.0)), ("local_crops", (0.05, 0.32))])
def test_crop_area_fraction_within_scale_range(which: str, scale: tuple[float, float]) -> None:
    """Read each crop's extent back from ramp images: area ∈ scale, aspect ∈ [3/4, 4/3]."""
    H, W, S = 96, 128, 8
    cfg = small_cfg(global_size=S, local_size=S, n_local=2, global_scale=(0.32, 1.0), local_scale=(0.05, 0.32), **BARE)
    crops = MultiCropAugment(cfg)(ramps(500, H, W), gen())[which]
    wfrac = (crops[:, 0, :, -1] - crops[:, 0, :, 0]).mean(1) * S / (S - 1)
    hfrac = (crops[:, 1, -1, :] - crops[:, 1, 0, :]).mean(1) * S / (S - 1)
    area = wfrac * hfrac
    aspect = (wfrac * W) / (hfrac * H)
    slack = 0.06  # integer rounding of w, h (≥ 25 px here) and bicubic edge taps
    assert area.min() > scale[0] * (1 - slack) and area.max() < scale[1] * (1 + slack)
    assert aspect.min() > 0.75 * (1 - slack) and aspect.max() < 4 / 3 * (1 + slack)
    span = scale[1] - scale[0]
    assert area.min() < scale[0] + 0.1 * span and area.max() > scale[1] - 0.1 * span  # the range is used


# ---------------------------------------------------------------- normalisation and inputs


def test_normalisation() -> None:
    kw = {k: v for k, v in BARE.items() if k not in ("mean", "std")}
    x = noise(4)
    raw = MultiCropAugment(small_cfg(**kw, mean=(0, 0, 0), std=(1, 1, 1)))(x, gen())
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = MultiCropAugment(small_cfg(**kw, mean=mean, std=std))(x, gen())
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for k in raw:
        torch.testing.assert_close(norm[k] * s + m, raw[k])
    const = torch.full((2, 3, 12, 12), 128, dtype=torch.uint8)
    out = MultiCropAugment(small_cfg(**kw, mean=mean, std=std))(const, gen())["global_crops"]
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), (128 / 255 - m.flatten()) / s.flatten())


def test_grey_input_expands_to_rgb() -> None:
    grey = noise(8, c=1)
    aug = MultiCropAugment(small_cfg())
    out = aug(grey, gen())
    assert out["global_crops"].shape == (16, 3, 8, 8)
    rgb = aug(grey.expand(-1, 3, -1, -1).contiguous(), gen())
    for k in out:
        torch.testing.assert_close(out[k], rgb[k], atol=1e-5, rtol=0)
    raw = MultiCropAugment(small_cfg(mean=(0, 0, 0), std=(1, 1, 1)))(grey, gen())["local_crops"]
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[:, 1], raw[:, 2], atol=1e-6, rtol=0)


def test_float_input_equals_uint8_input() -> None:
    x = noise(4)
    aug = MultiCropAugment(small_cfg())
    a, b = aug(x, gen()), aug(x.float() / 255, gen())
    for k in a:
        assert torch.equal(a[k], b[k])


def test_list_of_differently_sized_images() -> None:
    aug = MultiCropAugment(small_cfg())
    same = noise(3)
    a, b = aug(same, gen()), aug(list(same), gen())
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    mixed = [noise(1, h=20, w=12)[0], noise(1, c=1, h=9, w=30)[0]]
    out = aug(mixed, gen())
    assert out["global_crops"].shape == (4, 3, 8, 8) and out["local_crops"].shape == (4, 3, 8, 8)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(3, 8, 8, dtype=torch.uint8), r"\[B, C, H, W\]"),
        (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "1 \\(grey\\) or 3 \\(RGB\\) channels"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "uint8"),
    ],
)
def test_bad_input_is_explained(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(DinoflowError, match=match):
        MultiCropAugment(small_cfg())(bad, gen())


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="odd"):
        CropConfig(blur_kernel_size=8)
    with pytest.raises(ValueError, match="blur probability"):
        CropConfig(blur_p=(1.0, 1.5, 0.5))
    with pytest.raises(ValueError, match="hue <= 0.5"):
        CropConfig(color_jitter=(0.4, 0.4, 0.2, 0.7))
    with pytest.raises(ValueError, match="low <= high"):
        CropConfig(aspect_ratio=(4 / 3, 3 / 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    aug = MultiCropAugment(small_cfg(global_size=32, local_size=16))
    x = noise(8, h=40, w=48)
    cpu, gpu = aug(x, gen()), aug(x.cuda(), gen())
    for k in cpu:
        assert gpu[k].device.type == "cuda"
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], atol=1e-4, rtol=0)


def test_device_jitter_gives_each_row_the_result_of_its_own_draws():
    """The accelerator's colour jitter (one fused pass per position of the op order, no host
    read) against the CPU's, which applies each op only to the rows that drew it there: the same
    draws give the same rows, for rows that drew no jitter too; compiled whole (aot_eager here)."""
    from dinoflow.data.augment import _jitter_fused, _jitter_position, _jitter_selected

    g = torch.Generator().manual_seed(5)
    n = 24
    x = torch.rand(n, 3, 10, 12, generator=g)
    rows = torch.rand(n, generator=g) < 0.7
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    factors = [0.6 + 0.8 * torch.rand(n, generator=g) for _ in range(3)] + [0.2 * torch.rand(n, generator=g) - 0.1]
    for enabled in ((True, True, True, True), (True, False, True, False)):
        want = _jitter_selected(x.clone(), rows, order, factors, enabled)
        assert not torch.allclose(want[rows], x[rows]) and torch.equal(want[~rows], x[~rows])
        torch._dynamo.reset()
        eager = _jitter_fused(x.clone(), rows, order, factors, enabled, compiled=False)
        compiled_step = torch.compile(_jitter_position, fullgraph=True, backend="aot_eager")
        op = torch.where(rows.unsqueeze(1), order, torch.full_like(order, -1))
        traced = x.clone()
        for position in range(4):
            traced = compiled_step(traced, op[:, position], factors, enabled)
        for got in (eager, traced):
            for i in range(n):  # row by row: each row's own ops in its own order
                torch.testing.assert_close(got[i], want[i], rtol=1e-6, atol=1e-6)
