"""The training image stream: shards (local or s3://) or an image folder → uint8 batches.

Sharding: every epoch the units (shards, or chunks of files for a folder) are shuffled with a
seed of (seed, epoch) and dealt round-robin to the (rank, data-loader worker) slots; when there
are fewer units than slots, every slot reads all units and keeps every slots-th sample instead,
so no rank starves. Inside a unit, a seeded shuffle buffer mixes samples. The stream is endless
(epochs follow each other); the loop decides when to stop.

Batches, not samples, leave the workers: each worker decodes its images and runs the step's
host-side preparation (`prepare(images, step)`: iBOT masks, and the crops when training on a
CPU), so none of it runs on the training thread. The DataLoader takes batch j from worker
j % W; on a restart at step k the workers' roles rotate by k so that batch j is still global
batch k + j, and every batch carries its step for the loop to check.

Resume: the stream is a pure function of (seed, rank, world size, workers), so a job restarted
after k batches skips k batches' worth of samples without decoding them and continues with
exactly the batches the uninterrupted job would have seen. (On a different world size the
order differs; the position in epochs is kept.)

Undecodable samples are skipped and counted: each yielded sample carries how many were skipped
just before it, so the sum over a batch is the batch's skip count. Data that yields no image never
loops forever: `check_training_data` refuses a source whose first MAX_UNDECODABLE_RUN samples all
fail to decode before training starts, and the stream stops with a DinoflowError after that many
undecodable samples in a row, or after an epoch without a single image.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dinoflow.data.curated import verify_curated
from dinoflow.data.decode import CorruptImage, decode_image
from dinoflow.data.formats import IMAGE_SUFFIXES
from dinoflow.data.shards import iter_shard
from dinoflow.data.sources import Entry, list_source, read_entry_bytes
from dinoflow.errors import DinoflowError

FILES_PER_UNIT = 256
SHUFFLE_BUFFER = 1024
MAX_UNDECODABLE_RUN = 1000  # undecodable samples in a row before the data is declared unusable
MAX_ASPECT = 4.0  # longer side kept up to this multiple of the shorter one (see load_image)
MAX_AUTO_WORKERS = 8
# ("shard", url) or ("files", [paths or s3:// URLs])
Unit = tuple[str, str | list[str]]

Prepare = Callable[[Any, int], dict]  # (uint8 images [B,3,H,W] or a list of [3,H,W], step) → host-side views


def discover_units(source: str) -> list[Unit]:
    """("shard", url) units for shard sources, ("files", [paths or s3:// URLs]) units for images.

    The source is listed exactly as curation lists its inputs (`dinoflow.data.sources.list_source`:
    a local folder, a single file or an s3:// prefix, recursively, hidden files skipped), so any
    folder `dinoflow curate` can read is one training can read. A source holding .tar shards is
    read as shards (curated output); otherwise as its image files.
    """
    verify_curated(source)  # a curated directory a killed curate run left behind is refused here

    if not source.startswith("s3://") and not Path(source).exists():
        raise DinoflowError(f"training data {source} does not exist: run `dinoflow curate` first or set the data path")
    entries = list_source(source)
    shards = [e.ref for e in entries if e.kind == "tar"]
    if shards:
        return [("shard", s) for s in shards]
    files = [e.ref for e in entries if e.kind == "image"]
    if not files:
        raise DinoflowError(f"{source} holds no .tar shards and no images ({', '.join(IMAGE_SUFFIXES)})")
    return [("files", files[i : i + FILES_PER_UNIT]) for i in range(0, len(files), FILES_PER_UNIT)]


def check_training_data(
    source: str, what: str, *, max_pixels: int = 64_000_000, limit: int = MAX_UNDECODABLE_RUN
) -> list[Unit]:
    """Discover the units of `source` and make sure an image decodes among its first `limit` samples.

    Returns the units (for `make_loader`); raises a DinoflowError naming `what` (the config key) and
    counting the undecodable samples otherwise. Stops at the first image, so good data costs one decode.
    """
    units = discover_units(source)
    reasons: Counter[str] = Counter()
    example = ""
    for unit in units:
        for key, data in _iter_unit(unit):
            try:
                decode_image(data, max_pixels=max_pixels)
                return units
            except CorruptImage as e:
                reasons[e.reason] += 1
                example = example or f"{key}: {e}"
            if sum(reasons.values()) >= limit:
                break
        if sum(reasons.values()) >= limit:
            break
    n = sum(reasons.values())
    counts = ", ".join(f"{c} {r}" for r, c in reasons.most_common())
    scope = f"the first {n} samples tried" if n >= limit else f"all {n} samples"
    raise DinoflowError(
        f"{what}={source}: no decodable image in {scope} ({n} undecodable: {counts}; e.g. {example}). "
        f"Point {what} at curated shards (`dinoflow curate`) or a folder of images"
    )


def _iter_unit(unit: Unit) -> Iterator[tuple[str, bytes]]:
    kind, ref = unit
    if kind == "shard":
        for s in iter_shard(str(ref)):
            yield s.key, s.data
    else:
        for path in ref:
            # local files are read without blocking (a FIFO named x.png is not waited on); unreadable
            # or gone since discovery: b"", counted as undecodable, like a corrupt file
            data, _ = read_entry_bytes(Entry(path, "image", path))
            yield path, data


def load_image(img, size: int) -> torch.Tensor:
    """PIL image → uint8 RGB [3, H, W] with its shorter side resized to `size` (bicubic), the
    aspect ratio kept: multi-crop then samples its crops from the whole image, as the recipe's
    RandomResizedCrop does. Only an extreme panorama is trimmed (centre) to MAX_ASPECT : 1,
    which bounds a batch's memory; the recipe's crops (aspect ≤ 4/3, area ≥ 5%) barely reach
    past that anyway.
    """
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    cw, ch = min(nw, int(size * MAX_ASPECT)), min(nh, int(size * MAX_ASPECT))
    if (cw, ch) != (nw, nh):
        left, top = (nw - cw) // 2, (nh - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def collate_images(images: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One uint8 [B, 3, H, W] tensor when all images share a size, else the list (multi-crop
    takes both)."""
    if all(im.shape == images[0].shape for im in images):
        return torch.stack(images)
    return images


def resolve_workers(setting: int | None, device: torch.device, local_world_size: int = 1) -> int:
    """`train.num_workers`, or with null: 0 on a CPU (the step uses every core), else the CPUs
    available per GPU process minus one for the training thread, at most MAX_AUTO_WORKERS."""
    if setting is not None:
        return setting
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_world_size) - 1))


class TrainStream(IterableDataset):
    """Endless, seeded, rank- and worker-sharded stream of batches:
    {"prepared": prepare(images, step) (default: {"images": images}), "skipped": int, "step": int,
    "epoch": int}; images uint8 [B, 3, H, W] (or a list of [3, H, W] when sizes differ)."""

    def __init__(
        self,
        source: str,
        *,
        load_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        skip_batches: int = 0,
        max_pixels: int = 64_000_000,
        prepare: Prepare | None = None,
        units: list[Unit] | None = None,
    ):
        self.source = source
        self.units = units if units is not None else discover_units(source)
        self.load_size, self.seed = load_size, seed
        self.rank, self.world = rank, world_size
        self.batch_size, self.skip_batches, self.max_pixels = batch_size, skip_batches, max_pixels
        self.prepare = prepare

    def _slot(self) -> tuple[int, int, int, int]:
        """(worker id, workers, data slot, slots). A worker's role (which share of the data it
        reads) is its id rotated by the batches already done, so batch j of a resumed loader
        (from worker j % W) is the uninterrupted run's batch skip + j."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        role = (wid + self.skip_batches) % nw
        return wid, nw, self.rank * nw + role, self.world * nw

    def _epoch_items(self, epoch: int, slot: int, n_slots: int) -> Iterator[tuple[str, bytes]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        unit_level = len(self.units) >= n_slots
        mine = [self.units[i] for j, i in enumerate(order) if (not unit_level) or j % n_slots == slot]
        rng = random.Random(f"{self.seed}/{epoch}/{slot}")
        buf: list[tuple[str, bytes]] = []
        k = 0
        for unit in mine:
            for item in _iter_unit(unit):
                if not unit_level:
                    k += 1
                    if (k - 1) % n_slots != slot:
                        continue
                buf.append(item)
                if len(buf) >= SHUFFLE_BUFFER:
                    yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _samples(self, slot: int, n_slots: int, to_skip: int) -> Iterator[tuple[torch.Tensor | None, int]]:
        """(image uint8 [3, H, W], epoch) forever, after skipping `to_skip` samples undecoded;
        (None, epoch) marks an undecodable sample."""
        epoch, bad_run, bad_total = 0, 0, 0
        while True:
            produced, resumed_past, decoded = 0, 0, 0
            for _key, data in self._epoch_items(epoch, slot, n_slots):
                produced += 1
                if to_skip > 0:
                    to_skip, resumed_past = to_skip - 1, resumed_past + 1
                    continue
                try:
                    img = decode_image(data, max_pixels=self.max_pixels)
                except CorruptImage:
                    bad_run, bad_total = bad_run + 1, bad_total + 1
                    if bad_run >= MAX_UNDECODABLE_RUN:
                        raise DinoflowError(
                            f"the training data {self.source} gave {bad_run} undecodable samples in a "
                            f"row ({bad_total} on this rank so far): check or re-curate it"
                        ) from None
                    yield None, epoch
                    continue
                decoded, bad_run = decoded + 1, 0
                yield load_image(img, self.load_size), epoch
            if produced == 0:
                raise DinoflowError("the training data yielded no samples for this rank")
            if decoded == 0 and resumed_past == 0:
                raise DinoflowError(
                    f"none of the {produced} samples this rank read from {self.source} in epoch "
                    f"{epoch} decodes as an image ({bad_total} undecodable so far)"
                )
            epoch += 1

    def __iter__(self):
        wid, nw, slot, n_slots = self._slot()
        role = slot - self.rank * nw
        # this role's share of the batches already done: skip their samples without decoding
        my_batches = max(0, (self.skip_batches - role + nw - 1) // nw)
        step = self.skip_batches + wid  # the global step of this worker's next batch
        images: list[torch.Tensor] = []
        skipped = 0
        for img, epoch in self._samples(slot, n_slots, my_batches * self.batch_size):
            if img is None:
                skipped += 1
                continue
            images.append(img)
            if len(images) < self.batch_size:
                continue
            batch = collate_images(images)
            prepared = self.prepare(batch, step) if self.prepare is not None else {"images": batch}
            yield {"prepared": prepared, "skipped": skipped, "step": step, "epoch": epoch}
            images, skipped, step = [], 0, step + nw


def make_loader(
    source: str,
    *,
    load_size: int,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    num_workers: int,
    skip_batches: int = 0,
    prepare: Prepare | None = None,
    pin_memory: bool | None = None,
    units: list[Unit] | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches (see TrainStream) forever; batch j is global step skip_batches + j. `units`: from
    `check_training_data` (saves listing the source twice)."""
    ds = TrainStream(
        source,
        load_size=load_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        skip_batches=skip_batches,
        prepare=prepare,
        units=units,
    )
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    loader = DataLoader(
        ds,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)
