"""DINOv2 multi-crop augmentation, batched, in plain torch, on the images' device.

    aug = MultiCropAugment(cfg.pretrain.crops)
    out = aug(images, generator)       # images: uint8 [B,C,H,W] (C = 1 or 3) or float in [0, 1]
    out["global_crops"]                # float32 [n_global·B, 3, G, G], crop-major: crop 0 of all samples, then crop 1
    out["local_crops"]                 # float32 [n_local·B, 3, L, L], crop-major likewise

The recipe (`dinov2/data/augmentations.py`, applied per crop in this order): RandomResizedCrop
(scale range per crop type, aspect ratio 3/4–4/3, torchvision's sampler: 10 attempts, then a
centre-crop fallback) with bicubic resampling; horizontal flip p 0.5; ColorJitter (brightness
0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, its four ops in a fresh random order
per image as torchvision does; grayscale p 0.2; Gaussian blur (σ ~ U(0.1, 2), kernel 9);
solarize (threshold 128/255) p 0.2 on the second global crop only; normalise with mean/std.

Blur probabilities: dinoflow applies the INTENDED values (1.0 on global 1, 0.1 on global 2,
0.5 on locals). The official `GaussianBlur(p)` subclasses `RandomApply` and passes it
`1 - p`, so the official code never blurs global crop 1, blurs global crop 2 with p 0.9, and
locals with 0.5. Set `blur_p: [0.0, 0.9, 0.5]` to reproduce the official behaviour.

Why plain torch and not kornia: every random number comes from ONE `torch.rand` call on the
caller's generator, laid out sample-major `[B, 2 + n_local, N_PARAMS]`. That gives exact
control of per-sample randomness: the same seed gives bitwise-identical output; on a CPU
generator a sample's parameters depend only on its position in the batch (not on the other
images, nor on the configured probabilities — so a run with an op switched off sees the very
same crops); parameters are drawn on the generator's device and moved, so CPU and CUDA runs
use the same crops. Each crop set (the globals, the locals) is one `grid_sample` call: the
crops of a sample are stacked along the output height, so the input is never copied.

Deliberate differences from the PIL/torchvision pipeline (documented, small):
- Bicubic is `grid_sample`'s (Keys a = −0.75; PIL uses a = −0.5), without antialiasing when
  downscaling (the recipe downsamples at most ~1.65× for locals, ~1.3× for globals from
  320×256 images), and taps just outside the crop box read real image pixels (PIL crops
  first and replicates the crop's edge). Bicubic overshoot is clamped to [0, 1].
- Everything runs in float32 with no uint8 rounding between ops.
- Contrast blends with the mean luma of the image (torchvision's tensor rule), in float.
- Blur kernel: 9 taps as in DINOv2, clamped on crops smaller than 9 px to the largest odd
  side ≤ the crop (reflect padding needs pad < side). σ stays in pixels, so on tiny crops
  (e.g. 14 px) a σ-2 blur removes relatively far more than on 98-px crops; scale
  `blur_sigma` down in the config for tiny images if that matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dinoflow.config import CropConfig
from dinoflow.data import color
from dinoflow.errors import DinoflowError

N_ATTEMPTS = 10  # torchvision RandomResizedCrop
# Column layout of the per-crop uniform draws (fixed, independent of the config).
_SCALE = slice(0, N_ATTEMPTS)
_RATIO = slice(N_ATTEMPTS, 2 * N_ATTEMPTS)
_TOP, _LEFT = 2 * N_ATTEMPTS, 2 * N_ATTEMPTS + 1
_FLIP, _JITTER = 22, 23
_FACTORS = slice(24, 28)  # brightness, contrast, saturation, hue
_ORDER = slice(28, 32)  # argsort → a uniform random permutation of the four jitter ops
_GRAY, _BLUR, _SIGMA, _SOLARIZE = 32, 33, 34, 35
N_PARAMS = 36


def sample_crop_boxes(
    height: torch.Tensor,
    width: torch.Tensor,
    u: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandomResizedCrop box sampler, vectorised over N images.

    height, width: [N] image sizes; u: [N, ≥ 22] uniforms in [0, 1) (columns 0–9 scale,
    10–19 log aspect ratio, 20 top, 21 left). Attempt k draws area·U(scale) and
    exp(U(log ratio)), rounds w, h (half to even, as Python's round) and is accepted when
    0 < w ≤ W and 0 < h ≤ H; the first accepted attempt wins, its top/left is uniform over
    valid integers. With none accepted: the largest centred box whose aspect ratio is
    clamped into `ratio`.
    Returns (top, left, h, w), each int64 [N].
    """
    u = u.to(torch.float64)
    H = height.to(torch.float64).unsqueeze(1)
    W = width.to(torch.float64).unsqueeze(1)
    area = H * W
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, _SCALE])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, _RATIO]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # [N, 10]
    first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first True (0 if none)
    found = ok.any(dim=1)
    w_ok = w.gather(1, first).squeeze(1)
    h_ok = h.gather(1, first).squeeze(1)

    Hs, Ws = H.squeeze(1), W.squeeze(1)
    in_ratio = Ws / Hs
    w_fb = torch.where(in_ratio > ratio[1], torch.round(Hs * ratio[1]), Ws)
    h_fb = torch.where(in_ratio < ratio[0], torch.round(Ws / ratio[0]), Hs)
    w_fin = torch.where(found, w_ok, w_fb)
    h_fin = torch.where(found, h_ok, h_fb)

    top_rand = torch.floor(u[:, _TOP] * (Hs - h_fin + 1)).clamp(max=Hs - h_fin)
    left_rand = torch.floor(u[:, _LEFT] * (Ws - w_fin + 1)).clamp(max=Ws - w_fin)
    top = torch.where(found, top_rand, torch.div(Hs - h_fin, 2, rounding_mode="floor"))
    left = torch.where(found, left_rand, torch.div(Ws - w_fin, 2, rounding_mode="floor"))
    return top.long(), left.long(), h_fin.long(), w_fin.long()


def _axis_coords(
    start: torch.Tensor, length: torch.Tensor, size: int, full: int, flip: torch.Tensor | None
) -> torch.Tensor:
    """Normalised (align_corners=False) sample positions [N, size] of a `size`-pixel resize of
    the pixel span [start, start + length) in an axis of `full` pixels; mirrored where `flip`."""
    centres = (torch.arange(size, dtype=torch.float64, device=start.device) + 0.5) / size  # (0, 1)
    centres = centres.unsqueeze(0).expand(start.shape[0], size)
    if flip is not None:
        centres = torch.where(flip.unsqueeze(1), 1.0 - centres, centres)
    src = start.to(torch.float64).unsqueeze(1) + centres * length.to(torch.float64).unsqueeze(1)
    return (2.0 * src / full - 1.0).to(torch.float32)


class MultiCropAugment:
    """DINOv2 multi-crop (2 global, or `n_global`, + `n_local` local crops), batched, per-sample random.

    See the module docstring for the recipe, the blur-probability note and the differences
    from the PIL pipeline. Stateless: all randomness comes from the generator passed in.
    """

    def __init__(self, cfg: CropConfig) -> None:
        self.cfg = cfg
        self.global_kernel = color.blur_kernel_size(cfg.global_size, cfg.blur_kernel_size)
        self.local_kernel = color.blur_kernel_size(cfg.local_size, cfg.blur_kernel_size)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"MultiCropAugment({c.n_global}×{c.global_size}px scale {c.global_scale}, {c.n_local}×{c.local_size}px "
            f"scale {c.local_scale}, blur_p {c.blur_p})"
        )

    # ------------------------------------------------------------------ input handling

    @staticmethod
    def _to_batch(images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ float [B, C, Hmax, Wmax] in [0, 1] plus per-image heights / widths [B] (int64)."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4:
                raise DinoflowError(
                    f"MultiCropAugment expects images shaped [B, C, H, W], got {tuple(images.shape)}; "
                    "add a batch dimension with images.unsqueeze(0) for a single image"
                )
            items = None
            batch = images
        else:
            items = list(images)
            if not items:
                raise DinoflowError("MultiCropAugment got an empty list of images")
            for k, im in enumerate(items):
                if not isinstance(im, torch.Tensor) or im.dim() != 3:
                    raise DinoflowError(
                        f"image {k} must be a tensor shaped [C, H, W], got {getattr(im, 'shape', type(im))}"
                    )
            batch = items[0]
        if batch.dtype != torch.uint8 and not batch.is_floating_point():
            raise DinoflowError(f"images must be uint8 (0–255) or float in [0, 1], got dtype {batch.dtype}")

        def to_float(x: torch.Tensor) -> torch.Tensor:
            return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

        if items is None:
            b, c, h, w = batch.shape
            if c not in (1, 3):
                raise DinoflowError(
                    f"images must have 1 (grey) or 3 (RGB) channels, got {c} (shape {tuple(batch.shape)})"
                )
            if b == 0 or h == 0 or w == 0:
                raise DinoflowError(f"empty image batch {tuple(batch.shape)}")
            sizes = torch.tensor([[h, w]] * b, dtype=torch.int64)
            return to_float(batch), sizes[:, 0], sizes[:, 1]

        # Differently sized images: pad to a common size by edge replication, so bicubic taps
        # past an image's true border read what `padding_mode="border"` would give.
        chans = {im.shape[0] for im in items}
        if not chans <= {1, 3}:
            raise DinoflowError(f"images must have 1 (grey) or 3 (RGB) channels, got {sorted(chans)}")
        c = 3 if 3 in chans else 1
        hmax = max(im.shape[1] for im in items)
        wmax = max(im.shape[2] for im in items)
        out = []
        for im in items:
            if im.dtype != batch.dtype:
                raise DinoflowError(f"all images must share one dtype, got {batch.dtype} and {im.dtype}")
            x = to_float(im).expand(c, -1, -1)
            x = F.pad(x.unsqueeze(0), (0, wmax - x.shape[2], 0, hmax - x.shape[1]), mode="replicate")
            out.append(x)
        sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in items], dtype=torch.int64)
        return torch.cat(out), sizes[:, 0], sizes[:, 1]

    # ------------------------------------------------------------------ the pipeline

    def __call__(
        self, images: torch.Tensor | Sequence[torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Multi-crop a batch.

        images: uint8 [B, C, H, W] (C = 1 or 3; grey is expanded to RGB) or float in [0, 1],
            on any device; or a list of [C, H, W] tensors of different sizes.
        generator: the source of every random draw (a CPU generator keeps results identical
            across devices); None uses torch's default generator.
        Returns {"global_crops": float32 [n_global·B, 3, G, G], "local_crops": float32 [n_local·B, 3, L, L]},
        normalised, crop-major, on the images' device.
        """
        cfg = self.cfg
        x, heights, widths = self._to_batch(images)
        dev = x.device
        b = x.shape[0]
        n_crops = 2 + cfg.n_local  # the draws of both global crops, whatever n_global
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(b, n_crops, N_PARAMS, generator=generator, dtype=torch.float64, device=gen_dev).to(dev)
        heights, widths = heights.to(dev, non_blocking=True), widths.to(dev, non_blocking=True)

        def crop_major(cols: torch.Tensor) -> torch.Tensor:  # [B, k, P] → [k·B, P]
            return cols.transpose(0, 1).reshape(-1, N_PARAMS)

        # the layout of the draws keeps both global crops' columns, so one global crop is the
        # first of the two (same crop, same photometrics) and the locals never move
        n_glob = cfg.n_global
        u_glob = crop_major(u[:, :n_glob])
        g = self._crops(x, heights, widths, u_glob, n_glob, cfg.global_size, cfg.global_scale)
        blur_p = torch.cat([torch.full((b,), cfg.blur_p[i], dtype=torch.float64, device=dev) for i in range(n_glob)])
        sol_p = torch.cat(
            [torch.full((b,), (0.0, cfg.solarize_p)[i], dtype=torch.float64, device=dev) for i in range(n_glob)]
        )
        g = self._photometric(g, u_glob, blur_p, sol_p, self.global_kernel)

        if cfg.n_local:
            u_loc = crop_major(u[:, 2:])
            loc = self._crops(x, heights, widths, u_loc, cfg.n_local, cfg.local_size, cfg.local_scale)
            n = loc.shape[0]
            blur_p = torch.full((n,), cfg.blur_p[2], dtype=torch.float64, device=dev)
            loc = self._photometric(
                loc, u_loc, blur_p, torch.zeros(n, dtype=torch.float64, device=dev), self.local_kernel
            )
        else:
            loc = torch.empty(0, 3, cfg.local_size, cfg.local_size, device=dev)
        return {"global_crops": g, "local_crops": loc}

    def _crops(
        self,
        x: torch.Tensor,
        heights: torch.Tensor,
        widths: torch.Tensor,
        u: torch.Tensor,
        k: int,
        size: int,
        scale: tuple[float, float],
    ) -> torch.Tensor:
        """k resized crops of every image in ONE grid_sample: [k·B, 3, size, size] (crop-major)."""
        b, c, hp, wp = x.shape
        top, left, h, w = sample_crop_boxes(heights.repeat(k), widths.repeat(k), u, scale, self.cfg.aspect_ratio)
        flip = u[:, _FLIP] < self.cfg.flip_p
        gx = _axis_coords(left, w, size, wp, flip)  # [k·B, S]
        gy = _axis_coords(top, h, size, hp, None)
        # Sample b's k crops stacked along the output height: grid [B, k·S, S, 2].
        gx = gx.view(k, b, 1, size).expand(k, b, size, size)
        gy = gy.view(k, b, size, 1).expand(k, b, size, size)
        grid = torch.stack((gx, gy), dim=-1).permute(1, 0, 2, 3, 4).reshape(b, k * size, size, 2)
        out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
        out = out.clamp_(0.0, 1.0).view(b, c, k, size, size).permute(2, 0, 1, 3, 4).reshape(k * b, c, size, size)
        if c == 1:
            out = out.expand(-1, 3, -1, -1).contiguous()
        return out

    def _photometric(
        self, x: torch.Tensor, u: torch.Tensor, blur_p: torch.Tensor, solarize_p: torch.Tensor, kernel: int
    ) -> torch.Tensor:
        """Jitter → grayscale → blur → solarize → normalise, each with its per-row coin flip."""
        cfg = self.cfg
        bri, con, sat, hue = cfg.color_jitter
        jitter_rows = u[:, _JITTER] < cfg.color_jitter_p
        if cfg.color_jitter_p > 0 and (x.device.type != "cpu" or bool(jitter_rows.any())):
            f = u[:, _FACTORS]
            factors = []  # per-row factors in torchvision's op numbering
            for strength, col in ((bri, 0), (con, 1), (sat, 2)):
                lo = max(0.0, 1.0 - strength)
                factors.append((lo + (1.0 + strength - lo) * f[:, col]).float())
            factors.append(((2.0 * f[:, 3] - 1.0) * hue).float())
            enabled = tuple(v > 0 for v in (bri, con, sat, hue))
            order = torch.argsort(u[:, _ORDER], dim=1)  # a random permutation of the 4 ops per row
            jitter = _jitter_selected if x.device.type == "cpu" else _jitter_fused
            x = jitter(x, jitter_rows, order, factors, enabled)
        x = _apply_rows(x, u[:, _GRAY] < cfg.grayscale_p, color.grayscale)
        lo, hi = cfg.blur_sigma
        sigma = (lo + (hi - lo) * u[:, _SIGMA]).float()
        x = _apply_rows(x, u[:, _BLUR] < blur_p, lambda t, s: color.gaussian_blur(t, s, kernel), sigma)
        x = _apply_rows(x, u[:, _SOLARIZE] < solarize_p, color.solarize)
        mean = _const(cfg.mean, x).view(1, 3, 1, 1)
        std = _const(cfg.std, x).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)


_JITTER_OPS = (color.adjust_brightness, color.adjust_contrast, color.adjust_saturation, color.adjust_hue)


def _jitter_selected(x, rows, order, factors, enabled) -> torch.Tensor:
    """Colour jitter on the rows that drew it, each op on the rows that drew it at each position
    of their op order (the CPU's path: selecting rows reads their count on the host).

    x [N, 3, H, W]; rows bool [N]; order long [N, 4] (op ids per position); factors 4 × [N]."""
    for step in range(4):
        for op_id, (fn, factor, on) in enumerate(zip(_JITTER_OPS, factors, enabled)):
            if on:
                x = _apply_rows(x, rows & (order[:, step] == op_id), fn, factor)
    return x


def _jitter_position(x: torch.Tensor, op: torch.Tensor, factors: list[torch.Tensor], enabled: tuple) -> torch.Tensor:
    """One position of every row's op order: each row gets the op it drew there (op [N]: 0..3,
    −1 none). Compiled, the four ops and the selection are one pass over the crops (plus
    contrast's per-image mean), the branches a row did not draw computed in registers only."""
    y = x
    for op_id, (fn, factor, on) in enumerate(zip(_JITTER_OPS, factors, enabled)):
        if on:
            y = torch.where((op == op_id).view(-1, 1, 1, 1), fn(x, factor), y)
    return y


_JITTER_COMPILED = None


def _jitter_fused(x, rows, order, factors, enabled, compiled: bool = True) -> torch.Tensor:
    """`_jitter_selected`'s result on an accelerator without a host read: 4 fused passes (one
    per position of the op order) instead of 16 masked ops over every row."""
    global _JITTER_COMPILED
    step = _jitter_position
    if compiled:
        if _JITTER_COMPILED is None:
            _JITTER_COMPILED = torch.compile(_jitter_position, fullgraph=True, dynamic=False)
        step = _JITTER_COMPILED
    op = torch.where(rows.unsqueeze(1), order, torch.full_like(order, -1))
    for position in range(4):
        x = step(x, op[:, position], factors, enabled)
    return x


def _const(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A small constant tensor on `like`'s device built by fill kernels (no host-to-device copy,
    which on a GPU would wait for the device)."""
    return torch.cat([torch.full((1,), float(v), dtype=like.dtype, device=like.device) for v in values])


def _apply_rows(x: torch.Tensor, rows: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    """Apply `fn(x[rows], *params[rows])` to the selected rows only (bool [N]); others untouched.

    On an accelerator every row is computed and a mask selects: selecting the rows first needs
    `nonzero()`, whose size the host must read (a wait for the device per coin flip)."""
    if x.device.type != "cpu":
        return torch.where(rows.view(-1, *([1] * (x.dim() - 1))), fn(x, *params), x)
    idx = rows.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, *params)
    sub = fn(x.index_select(0, idx), *(p.index_select(0, idx) for p in params))
    return x.index_copy_(0, idx, sub)
