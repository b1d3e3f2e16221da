"""Safe image decoding: bytes from an untrusted pool → an RGB `PIL.Image`, or `CorruptImage(reason)`.

Every input either comes out as a fully decoded 8-bit RGB image or raises `CorruptImage` with a
short machine-readable reason, so curation can drop it and record why; no input stops a stage.

Normalisation rules (chosen once, applied everywhere):
- EXIF orientation is applied (`ImageOps.exif_transpose`), so a phone photo comes out upright.
  Broken EXIF metadata does not drop an otherwise good image: it is decoded without rotation.
- Transparency (RGBA, LA, PA, palette or grey/RGB with a tRNS colour) is composited onto a
  WHITE background (what a browser shows), with straight-alpha blending and rounding.
- 16-bit and 32-bit integer grey ("I;16*", "I") is scaled from 0..65535 to 0..255 (value / 257,
  rounded), not clipped; float grey ("F") is read as 0..1 when it fits there, else as 0..255.
- CMYK, YCbCr, 1-bit, palette and grey images are converted with Pillow's converters.
- The first frame of an animated file is used.

The full image is decoded (`img.load()`) inside this function, so truncated files fail here and
not later in a data loader; `ImageFile.LOAD_TRUNCATED_IMAGES` is never enabled. (Pillow accepts a
PNG whose pixel data is complete but whose IEND chunk is missing: its pixels are all there.)
Decompression bombs are refused from the header size, before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Reasons a `CorruptImage` can carry; curation reports them verbatim.
REASONS = (
    "empty",  # zero bytes
    "not_an_image",  # Pillow recognises no image format
    "truncated",  # the file ends before the pixel data does
    "decompression_bomb",  # header claims more than max_pixels, or a huge metadata chunk
    "invalid_size",  # zero width or height
    "unsupported",  # a format or pixel mode Pillow cannot decode or convert to RGB
    "decode_error",  # any other failure inside the decoder (bad checksum, broken stream, ...)
)

WHITE = (255, 255, 255)


class CorruptImage(ValueError):
    """An input that cannot become an RGB image. `reason` is one of `REASONS`; `detail` is free text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 64_000_000,
    background: tuple[int, int, int] = WHITE,
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded 8-bit RGB image (H×W×3 when viewed as an array).

    Raises `CorruptImage` with a reason from `REASONS`. `max_pixels` bounds width×height; Pillow's
    own limit (`Image.MAX_IMAGE_PIXELS`, 89.5 M by default) also applies, so values above it have no
    effect unless that limit is raised too. Uses `warnings.catch_warnings`, which is process-global:
    decode in parallel with processes (DataLoader workers), not threads, if at all.
    """
    if not data:
        raise CorruptImage("empty", "zero bytes")
    with warnings.catch_warnings():
        # Pillow warns (not raises) between 1× and 2× its limit; either way it is a bomb here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise CorruptImage("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise CorruptImage("not_an_image", f"no known image format in {len(data)} bytes") from None
        except Exception as e:  # noqa: BLE001 - any parser failure on untrusted bytes is per-item
            raise _classify(e) from None

        w, h = img.size
        if w <= 0 or h <= 0:
            raise CorruptImage("invalid_size", f"{w}x{h}")
        if w * h > max_pixels:
            raise CorruptImage("decompression_bomb", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise CorruptImage("decompression_bomb", str(e)) from None
        except Exception as e:  # noqa: BLE001
            raise _classify(e) from None
        img = _apply_exif_orientation(img)
        try:
            return to_rgb(img, background=background)
        except CorruptImage:
            raise
        except Exception as e:  # noqa: BLE001
            raise CorruptImage("unsupported", f"cannot convert mode {img.mode!r} to RGB: {e}") from None


def _classify(e: BaseException) -> CorruptImage:
    msg = str(e)
    low = msg.lower()
    if isinstance(e, EOFError) or "truncat" in low:
        return CorruptImage("truncated", msg)
    if isinstance(e, ValueError) and "too large" in low:
        # e.g. PNG text/ICC chunks that inflate past Pillow's MAX_TEXT_CHUNK
        return CorruptImage("decompression_bomb", msg)
    if isinstance(e, (NotImplementedError, KeyError)) or "unsupported" in low or "not supported" in low:
        return CorruptImage("unsupported", f"{type(e).__name__}: {msg}")
    # OSError, SyntaxError, zlib.error, struct.error, IndexError, MemoryError, ...
    return CorruptImage("decode_error", f"{type(e).__name__}: {msg}")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not drop a decodable image
        return img
    return img if out is None else out


def to_rgb(img: Image.Image, *, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert a loaded image of any Pillow mode to 8-bit RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(np.clip(a, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        return composite(rgba, background)
    return img.convert("RGB")


def composite(rgba: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Straight-alpha blend `rgb·α + background·(1−α)`, rounded to uint8."""
    a = np.asarray(rgba, dtype=np.float64)
    alpha = a[..., 3:4] / 255.0
    bg = np.asarray(background, dtype=np.float64).reshape(1, 1, 3)
    out = a[..., :3] * alpha + bg * (1.0 - alpha)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def pixel_hash(img: Image.Image) -> str:
    """sha256 (hex) of the decoded RGB pixels and the size: equal iff the images are pixel-identical."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    h = hashlib.sha256()
    h.update(f"RGB:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def resize_max_side(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink (bicubic) so the longer side is at most `max_side`, keeping the aspect ratio.

    Images already small enough are returned unchanged (never upscaled). Each side stays ≥ 1 px.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if w >= h:
        new = (max_side, new[1])
    else:
        new = (new[0], max_side)
    return img.resize(new, Image.Resampling.BICUBIC)
