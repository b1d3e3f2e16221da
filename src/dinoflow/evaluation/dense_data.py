"""Dense evaluation sets: images with a per-pixel target (a class map or a depth map).

Folder formats (one `train/` and one `test/` each):

    segmentation_folder:  <split>/images/<stem>.<png|jpg|…>  +  <split>/masks/<stem>.png
                          a mask pixel is its class id (uint8 or 16-bit grey / palette indices);
                          255 means "ignore" (ADE20k's and VOC's convention)
    depth_folder:         <split>/images/<stem>.<png|jpg|…>  +  <split>/depth/<stem>.png
                          16-bit grey PNG in millimetres (NYU-Depth v2's and KITTI's export);
                          0 means "no measurement"

Every pair is checked before any work: an image without its target, a target without its image,
a size mismatch or a target of the wrong mode is an error that lists the files (the first ten of
each kind), so a user fixes the whole folder at once instead of one file per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from dinoflow.data.decode import CorruptImage, decode_image
from dinoflow.data.formats import IMAGE_SUFFIXES
from dinoflow.errors import DinoflowError

IGNORE_INDEX = 255
DenseTask = Literal["segmentation", "depth"]
TARGET_DIRS: dict[str, str] = {"segmentation": "masks", "depth": "depth"}
_MAX_LISTED = 10


@dataclass
class DenseImages:
    """N images with their targets.

    images:  list of uint8 [H, W] or [H, W, 3] arrays (sizes may differ between images)
    targets: list of [H, W] arrays of the image's own size: int64 class ids (255 = ignore) for
             segmentation, float32 metres (0 = invalid) for depth
    """

    images: list[np.ndarray]
    targets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: "np.ndarray | list[int]") -> "DenseImages":
        return DenseImages([self.images[int(i)] for i in idx], [self.targets[int(i)] for i in idx])


@dataclass
class DenseSplit:
    """A dense evaluation set: `classes` names the class ids (segmentation) and is empty for depth."""

    name: str
    task: DenseTask
    train: DenseImages
    test: DenseImages
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _listing(root: Path, what: str) -> dict[str, Path]:
    if not root.is_dir():
        raise DinoflowError(f"dense evaluation folder {root} does not exist; it must hold the {what}")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in out:
                raise DinoflowError(f"{root}: two files share the stem {p.stem!r} ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    if not out:
        raise DinoflowError(f"dense evaluation folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _listed(paths: list[str]) -> str:
    more = f" … and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return ", ".join(paths[:_MAX_LISTED]) + more


def _read_target(path: Path, task: DenseTask) -> tuple[np.ndarray | None, str]:
    """(target, "") or (None, why it is refused)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        return None, f"{path.name}: cannot be read ({e})"
    if task == "segmentation":
        if mode not in ("L", "P", "I;16", "I"):
            return None, f"{path.name}: mode {mode} (a mask is a one-channel PNG of class ids)"
        return arr.astype(np.int64), ""
    if mode not in ("I;16", "I;16B", "I", "L"):
        return None, f"{path.name}: mode {mode} (depth is a 16-bit grey PNG in millimetres)"
    if mode == "L":
        return None, f"{path.name}: 8-bit grey (depth needs 16-bit millimetres; 8 bits hold at most 0.255 m)"
    return (arr.astype(np.float32) / 1000.0), ""


def _decode_image(path: Path) -> np.ndarray:
    try:
        img = decode_image(path.read_bytes())
    except CorruptImage as e:
        raise DinoflowError(f"dense evaluation image {path} cannot be decoded ({e}); remove or replace it") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., :3] if arr.ndim == 3 else arr


def load_dense_folder(split_dir: str | Path, task: DenseTask) -> DenseImages:
    """`split_dir/images` + `split_dir/masks|depth` → DenseImages, or a DinoflowError listing every bad pair."""
    root = Path(split_dir)
    target_dir = TARGET_DIRS[task]
    images = _listing(root / "images", "images")
    targets = _listing(root / target_dir, f"{target_dir} (one PNG per image, same stem)")
    problems = []
    if missing := sorted(set(images) - set(targets)):
        problems.append(f"images without a {target_dir} file: {_listed(missing)}")
    if orphans := sorted(set(targets) - set(images)):
        problems.append(f"{target_dir} files without an image: {_listed(orphans)}")
    out_images, out_targets, bad = [], [], []
    for stem in sorted(set(images) & set(targets)):
        target, why = _read_target(targets[stem], task)
        if target is None:
            bad.append(why)
            continue
        image = _decode_image(images[stem])
        if image.shape[:2] != target.shape[:2]:
            bad.append(f"{stem}: image {image.shape[1]}×{image.shape[0]} vs target {target.shape[1]}×{target.shape[0]}")
            continue
        out_images.append(image)
        out_targets.append(target)
    if bad:
        problems.append(f"bad pairs: {_listed(bad)}")
    if problems:
        raise DinoflowError(f"dense evaluation split {root} ({task}):\n  " + "\n  ".join(problems))
    return DenseImages(out_images, out_targets)


def segmentation_classes(train: DenseImages, test: DenseImages) -> list[str]:
    """Class names "0".."C-1" for the largest id in either split (ignore excluded)."""
    top = -1
    for t in (*train.targets, *test.targets):
        valid = t[t != IGNORE_INDEX]
        if valid.size:
            top = max(top, int(valid.max()))
    if top < 0:
        raise DinoflowError("the segmentation masks hold no labelled pixel (every pixel is 255 = ignore)")
    return [str(i) for i in range(top + 1)]


def check_depth_valid(split: DenseImages, where: str) -> None:
    """A depth split must measure something: every map all zeros is a DinoflowError."""
    if not any(np.any(t > 0) for t in split.targets):
        raise DinoflowError(f"{where}: every depth map is 0 (no measurement); depth PNGs are millimetres in 16 bits")
