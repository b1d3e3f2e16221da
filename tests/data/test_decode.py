"""decode_image: every corrupt kind gets its reason; every odd-but-valid mode becomes the right RGB pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from dinoflow.data.decode import CorruptImage, decode_image, pixel_hash, resize_max_side


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height grey pixels, with almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def rgb(data: bytes, **kw) -> np.ndarray:
    img = decode_image(data, **kw)
    assert img.mode == "RGB"
    return np.asarray(img)


def reason(data: bytes, **kw) -> str:
    with pytest.raises(CorruptImage) as ei:
        decode_image(data, **kw)
    return ei.value.reason


@pytest.fixture
def noise_rgb() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))


# ---------------------------------------------------------------- corrupt inputs


def test_zero_bytes_is_empty():
    assert reason(b"") == "empty"


@pytest.mark.parametrize("data", [b"hello, not an image", b"<html><body>404</body></html>", bytes(range(256)) * 4])
def test_non_image_bytes(data):
    assert reason(data) == "not_an_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "GIF"])
def test_truncated_file_fails_at_decode_time(noise_rgb, fmt):
    img = noise_rgb.convert("P") if fmt == "GIF" else noise_rgb
    data = encode(img, fmt)
    assert reason(data[: len(data) // 2]) == "truncated"
    # the loader must not have been switched to tolerate truncation as a side effect
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_refused_from_header_before_decoding():
    # 100k × 100k claimed, ~100 bytes of data: a size check before decoding says "bomb", not "truncated"
    assert reason(png_header_only(100_000, 100_000)) == "decompression_bomb"


def test_max_pixels_is_enforced_below_pillows_limit():
    data = encode(Image.new("L", (200, 100), 7))
    assert decode_image(data, max_pixels=20_000).size == (200, 100)
    assert reason(data, max_pixels=19_999) == "decompression_bomb"


def test_pillow_bomb_warning_is_an_error_even_with_a_high_max_pixels():
    # 10k × 10k = 1e8 px is above Pillow's 89.5M warning threshold but below its 2× error threshold
    assert reason(png_header_only(10_000, 10_000), max_pixels=10**12) == "decompression_bomb"


def test_png_text_chunk_bomb():
    good = encode(Image.new("L", (4, 4), 0))
    payload = b"Comment\0\0" + zlib.compress(b"A" * (64 * 1024 * 1024), 9)  # 64 MiB of text in ~64 KiB
    ztxt = struct.pack(">I", len(payload)) + b"zTXt" + payload + struct.pack(">I", zlib.crc32(b"zTXt" + payload))
    data = good[:33] + ztxt + good[33:]  # after the 8-byte signature + 25-byte IHDR chunk
    assert reason(data) == "decompression_bomb"


# ---------------------------------------------------------------- normalisation


def test_grey_becomes_three_equal_channels():
    a = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = rgb(encode(Image.fromarray(a, "L")))
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], a)


def test_one_bit_image():
    a = np.zeros((4, 4), dtype=bool)
    a[1, 2] = True
    out = rgb(encode(Image.fromarray(a)))
    assert out[1, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_sixteen_bit_is_scaled_not_clipped():
    vals = np.array([[0, 257, 1000, 32896], [65535, 65278, 128, 129]], dtype=np.uint16)
    out = rgb(encode(Image.fromarray(vals)))  # saved as a 16-bit grey PNG
    expected = np.rint(vals / 257.0).astype(np.uint8)  # 0,1,4,128 / 255,254,0,1
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def test_sixteen_bit_tiff():
    vals = (np.arange(16, dtype=np.uint32).reshape(4, 4) * 4369).astype(np.uint16)  # 0 … 65535
    out = rgb(encode(Image.fromarray(vals), "TIFF"))
    np.testing.assert_array_equal(out[..., 1], np.rint(vals / 257.0).astype(np.uint8))


def test_cmyk_tiff_converts_exactly():
    img = Image.new("CMYK", (3, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    img.putpixel((1, 0), (0, 0, 0, 255))  # black ink
    img.putpixel((2, 0), (0, 0, 0, 0))  # no ink = white
    out = rgb(encode(img, "TIFF"))
    assert out[0].tolist() == [[0, 255, 255], [0, 0, 0], [255, 255, 255]]


def test_cmyk_jpeg():
    img = Image.new("CMYK", (16, 16), (0, 255, 0, 0))  # magenta
    out = rgb(encode(img, "JPEG", quality=95)).astype(int)
    assert np.abs(out - np.array([255, 0, 255])).max() <= 6


def test_alpha_is_composited_on_white():
    a = np.zeros((1, 3, 4), dtype=np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red
    a[0, 1] = (255, 0, 0, 128)  # half-transparent red
    a[0, 2] = (0, 0, 255, 0)  # fully transparent blue
    out = rgb(encode(Image.fromarray(a, "RGBA")))
    half = round(255 * (1 - 128 / 255))  # 127
    assert out[0].tolist() == [[255, 0, 0], [255, half, half], [255, 255, 255]]


def test_alpha_background_can_be_black():
    a = np.array([[[200, 100, 50, 128]]], dtype=np.uint8)
    out = rgb(encode(Image.fromarray(a, "RGBA")), background=(0, 0, 0))
    assert out[0, 0].tolist() == [round(200 * 128 / 255), round(100 * 128 / 255), round(50 * 128 / 255)]


def test_grey_alpha():
    a = np.array([[[0, 255], [0, 0]]], dtype=np.uint8)  # black opaque, black transparent
    out = rgb(encode(Image.fromarray(a, "LA")))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_palette_with_transparent_index():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 0, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    out = rgb(encode(img, transparency=0))
    assert out[0].tolist() == [[255, 255, 255], [200, 0, 0]]


def test_palette_without_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 0, 0] + [0] * (254 * 3))
    img.putpixel((1, 0), 1)
    out = rgb(encode(img))
    assert out[0].tolist() == [[10, 20, 30], [200, 0, 0]]


@pytest.mark.parametrize("orientation,rot", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation, rot):
    a = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = rgb(encode(Image.fromarray(a), exif=exif.tobytes()))
    # 3: rotate 180; 6: display = stored rotated 90° clockwise; 8: 90° counter-clockwise
    np.testing.assert_array_equal(out, np.rot90(a, k=rot))


def test_webp_and_lossless_formats_roundtrip(noise_rgb):
    want = np.asarray(noise_rgb)
    for fmt, kw in [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})]:
        np.testing.assert_array_equal(rgb(encode(noise_rgb, fmt, **kw)), want, err_msg=fmt)


# ---------------------------------------------------------------- hashing and resizing


def test_pixel_hash_same_pixels_any_encoding(noise_rgb):
    h = pixel_hash(decode_image(encode(noise_rgb)))
    assert pixel_hash(decode_image(encode(noise_rgb, compress_level=0))) == h
    assert pixel_hash(decode_image(encode(noise_rgb, "BMP"))) == h
    a = np.asarray(noise_rgb).copy()
    a[0, 0, 0] ^= 1
    assert pixel_hash(Image.fromarray(a)) != h


def test_pixel_hash_includes_size():
    data = np.arange(48, dtype=np.uint8)
    assert pixel_hash(Image.fromarray(data.reshape(2, 8, 3))) != pixel_hash(Image.fromarray(data.reshape(4, 4, 3)))


def test_resize_max_side():
    img = Image.new("RGB", (100, 50))
    assert resize_max_side(img, 28).size == (28, 14)
    assert resize_max_side(Image.new("RGB", (30, 91)), 28).size == (9, 28)
    assert resize_max_side(Image.new("RGB", (1000, 1)), 10).size == (10, 1)
    small = Image.new("RGB", (20, 10))
    assert resize_max_side(small, 28) is small  # never upscaled
    with pytest.raises(ValueError):
        resize_max_side(img, 0)


def test_resize_is_bicubic():
    a = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    np.testing.assert_array_equal(
        np.asarray(resize_max_side(img, 20)), np.asarray(img.resize((20, 20), Image.Resampling.BICUBIC))
    )
