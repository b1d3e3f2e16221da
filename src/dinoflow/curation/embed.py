"""Image embedders for curation: a pixel baseline (cold start) and a ViT backbone file.

Both map a list of RGB `PIL.Image`s to float32 `[B, D]` rows with unit L2 norm, so inner
product is cosine similarity everywhere downstream.

The pixel embedder is built for near-duplicate detection without a trained model: resize to
`size`×`size`, grey, Gaussian blur of `blur` pixels (a 1–2 px shift, a JPEG re-encode or a bit
of noise then moves the vector only a little), optional re-centring on the intensity centre of
mass (undoes translations, which is what most near copies of centred objects differ by),
subtract the image mean (brightness invariance) and L2-normalise (contrast invariance).

Embeddings are stored per partition with their uids (`curation.ingest`), keyed by the
embedder's `identity()`, so a rerun (or a run killed midway) skips finished partitions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from dinoflow.errors import DinoflowError

PIXEL_EMBEDDER_VERSION = 1


class Embedder(Protocol):
    dim: int

    def identity(self) -> str:
        """A string that changes whenever the embedding of the same image would change."""

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[B, dim] float32, unit L2 norm."""


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class PixelEmbedder:
    """Blurred, aligned grey pixels at `size`×`size` → [B, size*size] float32, unit norm.

    align: "none"; "center" moves the foreground's intensity centre of mass to the image centre
    (undoes small shifts); "moments" also rescales so the foreground's radius of gyration is a
    fixed share of the side (undoes small crops and zooms as well).
    """

    ALIGNS = ("none", "center", "moments", "moments_xy")

    def __init__(self, size: int = 28, blur: float = 0.0, align: str = "moments") -> None:
        if size < 2:
            raise ValueError(f"pixel embedding size must be >= 2, got {size}")
        if align not in self.ALIGNS:
            raise ValueError(f"unknown pixel alignment {align!r}; use one of {self.ALIGNS}")
        self.size = int(size)
        self.blur = float(blur)
        self.align = align
        self.dim = self.size * self.size

    def identity(self) -> str:
        return f"pixels-v{PIXEL_EMBEDDER_VERSION}-s{self.size}-b{self.blur:g}-{self.align}"

    def embed_one(self, img: Image.Image) -> np.ndarray:
        g = img.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        a = np.asarray(g, dtype=np.float32)
        if self.align != "none":
            a = align_foreground(a, scale={"center": None, "moments": "iso", "moments_xy": "xy"}[self.align])
        if self.blur > 0:
            from scipy.ndimage import gaussian_filter

            a = gaussian_filter(a, self.blur, mode="nearest").astype(np.float32)
        return a.ravel() - a.mean()

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return _normalize_rows(np.stack([self.embed_one(im) for im in images]))


# Foreground = pixels that differ from the (median) background by more than this share of the
# 0..255 range: mild noise then does not drag the centre of mass or the spread around.
FOREGROUND_MARGIN = 0.1 * 255
# "moments" alignment: the foreground's radius of gyration becomes this share of the side.
GYRATION_SHARE = 0.2


def align_foreground(a: np.ndarray, *, scale: str | None) -> np.ndarray:
    """Translate (and with `scale`, zoom) grey image `a` [H, W] so its foreground sits canonically.

    The background level (median) fills what moves in from outside. Images without a foreground
    are returned unchanged.
    """
    h, w = a.shape
    bg = float(np.median(a))
    weight = np.maximum(np.abs(a - bg) - FOREGROUND_MARGIN, 0.0)
    tot = float(weight.sum())
    if tot <= 0:
        return a
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = float((weight * ys).sum() / tot), float((weight * xs).sum() / tot)
    fy = fx = 1.0
    vy = float((weight * (ys - cy) ** 2).sum() / tot)
    vx = float((weight * (xs - cx) ** 2).sum() / tot)
    if scale == "iso" and vx + vy > 0:
        fy = fx = float(np.sqrt(vx + vy)) / (GYRATION_SHARE * min(h, w))
    elif scale == "xy" and vx > 0 and vy > 0:
        fy = float(np.sqrt(2 * vy)) / (GYRATION_SHARE * h)
        fx = float(np.sqrt(2 * vx)) / (GYRATION_SHARE * w)
    oy, ox = (h - 1) / 2, (w - 1) / 2
    # PIL's affine maps output (u, v) → input (f·u + c, f·v + d): output centre ← centre of mass.
    img = Image.fromarray((a - bg).astype(np.float32), "F")
    moved = img.transform(
        (w, h), Image.Transform.AFFINE, (fx, 0, cx - fx * ox, 0, fy, cy - fy * oy), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(moved, dtype=np.float32) + bg


class BackboneEmbedder:
    """CLS features of a ViT backbone file (dinoflow export or official hub `.pth`) → [B, D] float32.

    Images are resized to `size`×`size` (bicubic; `size` must be a multiple of the patch size),
    scaled to [0, 1] and normalised with the ImageNet mean/std the backbones were trained with.
    Runs on CUDA (bf16 autocast) when available, else on CPU in fp32.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(
        self, path: str | Path, size: int, batch_size: int = 256, device: str | None = None, arch: str | None = None
    ) -> None:
        import torch

        path = Path(path)
        if not path.is_file():
            raise DinoflowError(
                f"curate.embedder {str(path)!r} is neither 'pixels' nor an existing backbone file; "
                "run pretrain first or point it at a backbone.pth"
            )
        from dinoflow.models import load_backbone

        overrides = {"arch": arch} if arch else {}
        self.model = load_backbone(str(path), **overrides).eval()
        patch = int(getattr(self.model, "patch_size", 1))
        if size % patch:
            raise DinoflowError(f"curate.embed_size {size} must be a multiple of the backbone's patch size {patch}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.dim = int(self.model.embed_dim)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self._id = f"backbone-{h.hexdigest()[:16]}-s{self.size}"

    def identity(self) -> str:
        return self._id

    def _tensor(self, images: Sequence[Image.Image]):
        import torch

        arr = np.stack(
            [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)) for im in images]
        )
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                x = self._tensor(images[s : s + self.batch_size])
                if self.device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        f = self.model.forward_features(x)["x_norm_clstoken"]
                else:
                    f = self.model.forward_features(x)["x_norm_clstoken"]
                out.append(f.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return _normalize_rows(np.concatenate(out))


def make_embedder(
    spec: str, *, size: int, blur: float = 0.0, align: str = "moments", batch_size: int = 256, arch: str | None = None
) -> Embedder:
    """'pixels' → PixelEmbedder; anything else is a backbone file path → BackboneEmbedder."""
    if spec == "pixels":
        return PixelEmbedder(size=size, blur=blur, align=align)
    return BackboneEmbedder(spec, size=size, batch_size=batch_size, arch=arch)
