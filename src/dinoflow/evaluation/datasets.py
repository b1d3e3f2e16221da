"""Labelled evaluation sets: the demo arrays, image folders (a class per subfolder), labelled shards.

Every loader returns an `EvalSplit` with uint8 images and int64 labels for a train and a test
split. Images stay in memory: evaluation sets are small next to the pretraining pool.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dinoflow.config import EvalDataset
from dinoflow.data.decode import CorruptImage, decode_image
from dinoflow.data.formats import IMAGE_SUFFIXES
from dinoflow.data.shards import iter_shard, list_shards
from dinoflow.data.sources import read_local
from dinoflow.demo import sources as demo_sources
from dinoflow.errors import DinoflowError

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """images: uint8 [N,H,W] / [N,H,W,C] when all share a shape, else a list of [H,W(,C)] arrays."""

    images: "np.ndarray | list[np.ndarray]"
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "LabelledImages":
        if isinstance(self.images, np.ndarray):
            imgs: "np.ndarray | list[np.ndarray]" = self.images[idx]
        else:
            imgs = [self.images[i] for i in idx]
        return LabelledImages(imgs, self.labels[idx])


@dataclass
class EvalSplit:
    name: str
    train: LabelledImages
    test: LabelledImages
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _stack_if_uniform(images: Sequence[np.ndarray]) -> "np.ndarray | list[np.ndarray]":
    if images and all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return list(images)


def _decode_file(path: Path) -> np.ndarray:
    data, err = read_local(str(path))  # bounded: a file over the byte limit is refused from its size
    if err:
        raise DinoflowError(f"evaluation image {path} cannot be read ({err}); fix or remove it")
    try:
        img = decode_image(data)
    except CorruptImage as e:
        raise DinoflowError(f"evaluation image {path} cannot be decoded ({e}); remove or replace it") from None
    return np.asarray(img, dtype=np.uint8)


def _image_files(folder: Path) -> list[Path]:
    """Image-suffixed files under `folder`, sorted. Evaluation labels must be complete, so an entry
    that cannot be listed or is not a regular file (a FIFO, a dangling symlink) is an error, not a skip."""

    def unlistable(e: OSError) -> None:
        raise DinoflowError(f"evaluation folder {e.filename} cannot be listed ({e.strerror}); fix its permissions")

    out = []
    for dirpath, _dirs, names in os.walk(folder, onerror=unlistable):
        for name in names:
            p = Path(dirpath) / name
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                mode = p.stat().st_mode
            except OSError as e:
                raise DinoflowError(f"evaluation image {p} cannot be read ({e.strerror}); fix or remove it") from None
            if not stat.S_ISREG(mode):
                raise DinoflowError(f"evaluation image {p} is not a regular file (a FIFO, socket or device); remove it")
            out.append(p)
    return sorted(out)


def load_folder(root: str | Path, classes: list[str] | None = None) -> tuple[LabelledImages, list[str]]:
    """`root/<class>/<image>`: classes are the sorted subfolder names (or `classes`, to share a train split's)."""
    root = Path(root)
    if not root.is_dir():
        raise DinoflowError(f"evaluation folder {root} does not exist; it must hold one subfolder of images per class")
    try:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError as e:
        raise DinoflowError(f"evaluation folder {root} cannot be listed ({e.strerror}); fix its permissions") from None
    if not found:
        raise DinoflowError(f"evaluation folder {root} has no class subfolders (expected {root}/<class>/<image>)")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DinoflowError(f"{root}: classes {unknown} do not occur in the train split ({classes})")
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    for c in found:
        for p in _image_files(root / c):
            images.append(_decode_file(p))
            labels.append(index[c])
    if not images:
        raise DinoflowError(f"evaluation folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return LabelledImages(_stack_if_uniform(images), np.asarray(labels, dtype=np.int64)), classes


def load_shards(source: str, classes: list[str] | None = None) -> tuple[LabelledImages, list[str]]:
    """WebDataset shards whose `<key>.json` carries a `label` (an int class index or a class name)."""
    images: list[np.ndarray] = []
    raw_labels: list[Any] = []
    for url in list_shards(source):
        for s in iter_shard(url):
            if "label" not in (s.meta or {}):
                raise DinoflowError(f"{url}: sample {s.key!r} has no `label` in its json; evaluation needs labels")
            if s.error:  # a member the reader refused unread (sparse, a link, over the byte limit)
                raise DinoflowError(f"{url}: sample {s.key!r} cannot be read ({s.error})")
            try:
                img = decode_image(s.data)
            except CorruptImage as e:
                raise DinoflowError(f"{url}: sample {s.key!r} cannot be decoded ({e})") from None
            images.append(np.asarray(img, dtype=np.uint8))
            raw_labels.append(s.meta["label"])
    if not images:
        raise DinoflowError(f"no labelled samples in the shards at {source}")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels):
        labels = np.asarray(raw_labels, dtype=np.int64)
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1)]
    else:
        names = [str(v) for v in raw_labels]
        if classes is None:
            classes = sorted(set(names))
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DinoflowError(f"{source}: labels {unknown} do not occur in the train split")
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[n] for n in names], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DinoflowError(f"{source}: labels must be class indices in 0..{len(classes) - 1}")
    return LabelledImages(_stack_if_uniform(images), labels), classes


def seeded_subset(data: LabelledImages, max_n: int | None, seed: int) -> LabelledImages:
    """At most `max_n` samples, a seeded random choice kept in the original order."""
    if max_n is None or len(data) <= max_n:
        return data
    idx = np.sort(np.random.default_rng(seed).permutation(len(data))[:max_n])
    return data.subset(idx)


def load_eval_dataset(
    ds: EvalDataset, *, seed: int = 0, max_train: int | None = None, max_test: int | None = None
) -> EvalSplit:
    """Load one configured evaluation set (see `EvalDataset`), optionally subsampled."""
    if ds.kind in ("demo_mnist", "demo_digits"):
        # The demo splits use seed 0 by construction (the curation's eval set is built from it).
        tx, ty, vx, vy = demo_sources.mnist_split() if ds.kind == "demo_mnist" else demo_sources.digits_split()
        train, test = LabelledImages(tx, ty), LabelledImages(vx, vy)
        classes = [str(i) for i in range(10)]
    elif ds.kind == "folder":
        train, classes = load_folder(ds.train)  # type: ignore[arg-type]
        test, _ = load_folder(ds.test, classes)  # type: ignore[arg-type]
    elif ds.kind == "shards":
        train, classes = load_shards(ds.train)  # type: ignore[arg-type]
        test, _ = load_shards(ds.test, classes)  # type: ignore[arg-type]
    else:  # pragma: no cover - the config validates `kind`
        raise DinoflowError(f"unknown evaluation dataset kind {ds.kind!r}")
    train = seeded_subset(train, max_train, seed)
    test = seeded_subset(test, max_test, seed + 1)
    return EvalSplit(ds.name, train, test, classes)
