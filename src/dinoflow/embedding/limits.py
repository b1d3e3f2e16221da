"""What one image and one request may cost the embedding: bounds checked from image headers (or
array shapes) before any pixel is decoded or resized.

The evaluation transform scales the *shorter* side to image_size·resize_ratio, so a 1×400000 PNG
of a few hundred bytes becomes a 256×102,400,000 float image (hundreds of GB): the cost of an
image grows with its aspect ratio, not its file size. The bounds (`serving` in the config):
- `max_image_pixels`: decoded width × height of one image;
- `max_aspect_ratio`: longer side / shorter side;
- `max_resized_pixels`: pixels after the resize, before the centre crop;
- `max_request_pixels`: decoded pixels of all images of one request (served model).

Over a bound, the served model answers 400 (`OverLimit`) and `dinoflow embed` skips the image
with the reason (`over_limit: …`). Light on purpose (numpy, Pillow): the served model imports it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

REASON = "over_limit"


class OverLimit(ValueError):
    """An image or a request beyond one of the `Limits`; the message names the bound and its key."""


@dataclass(frozen=True)
class Limits:
    """Defaults equal the config's `serving` section (`dinoflow.config.ServingConfig`)."""

    max_image_pixels: int = 50_000_000
    max_aspect_ratio: float = 20.0
    max_resized_pixels: int = 4_000_000
    max_request_pixels: int = 200_000_000

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        """From a `ServingConfig`, a dict (a model's preprocess.json; missing keys take the defaults) or None."""
        if settings is None:
            return cls()
        if not isinstance(settings, dict):
            settings = settings.model_dump()
        return cls(**{k: settings[k] for k in asdict(cls()) if k in settings})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resized_shape(width: int, height: int, image_size: int, resize_ratio: float) -> tuple[int, int]:
    """(width, height) after the evaluation transform's resize (`_resize_shorter`'s rounding)."""
    size = int(round(image_size * resize_ratio))
    if height <= width:
        return int(size * width / height), size
    return size, int(size * height / width)


def check_image(width: int, height: int, limits: Limits, image_size: int, resize_ratio: float) -> None:
    """OverLimit when a width × height image costs more than `limits` allow (see the module docstring)."""
    if width <= 0 or height <= 0:
        return  # the decoder names an empty image
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise OverLimit(
            f"{REASON}: {width}x{height} = {pixels:,} pixels > serving.max_image_pixels {limits.max_image_pixels:,}"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise OverLimit(
            f"{REASON}: {width}x{height} has aspect ratio {ratio:.4g} > serving.max_aspect_ratio "
            f"{limits.max_aspect_ratio:g} (the resize scales the shorter side up to "
            f"{int(round(image_size * resize_ratio))} px)"
        )
    rw, rh = resized_shape(width, height, image_size, resize_ratio)
    if rw * rh > limits.max_resized_pixels:
        raise OverLimit(
            f"{REASON}: {width}x{height} resizes to {rw}x{rh} = {rw * rh:,} pixels > serving.max_resized_pixels "
            f"{limits.max_resized_pixels:,}"
        )


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header without decoding pixels; None when Pillow
    cannot read the header (the decoder then names the problem)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Exception:  # noqa: BLE001 - any header failure is reported by the decoder with its reason
        return None


def check_request(sizes: list[tuple[int, int] | None], limits: Limits, image_size: int, resize_ratio: float) -> None:
    """OverLimit naming the first image (by index) over a per-image bound, or the request's total."""
    total = 0
    for i, wh in enumerate(sizes):
        if wh is None:
            continue
        try:
            check_image(wh[0], wh[1], limits, image_size, resize_ratio)
        except OverLimit as e:
            raise OverLimit(f"image {i} of the request: {e}") from None
        total += wh[0] * wh[1]
    if total > limits.max_request_pixels:
        raise OverLimit(
            f"{REASON}: the request's {len(sizes)} images hold {total:,} decoded pixels > serving.max_request_pixels "
            f"{limits.max_request_pixels:,}; send fewer or smaller images per request"
        )
