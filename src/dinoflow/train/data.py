"""The training image stream: shards (local or s3://) or an image folder → uint8 batches.

Sharding: every epoch the units (shards, or chunks of files for a folder) are shuffled with a
seed of (seed, epoch) and dealt round-robin to the (rank, data-loader worker) slots; when there
are fewer units than slots, every slot reads all units and keeps every slots-th sample instead,
so no rank starves. Inside a unit, a seeded shuffle buffer mixes samples. The stream is endless
(epochs follow each other); the loop decides when to stop.

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

import random
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dinoflow.errors import DinoflowError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
FILES_PER_UNIT = 256
SHUFFLE_BUFFER = 1024
MAX_UNDECODABLE_RUN = 1000  # undecodable samples in a row before the data is declared unusable


def discover_units(source: str) -> list[tuple[str, object]]:
    """("shard", url) units for shard sources, ("files", [paths]) units for an image folder."""
    from dinoflow.curation.manifest import verify_curated
    from dinoflow.data.shards import list_shards

    verify_curated(source)  # a curated directory a killed curate run left behind is refused here

    if source.startswith("s3://"):
        shards = list_shards(source)
        if not shards:
            raise DinoflowError(f"no .tar shards under {source}: run `dinoflow curate` or point the data path at shards")
        return [("shard", s) for s in shards]
    root = Path(source)
    if not root.exists():
        raise DinoflowError(f"training data {source} does not exist: run `dinoflow curate` first or set the data path")
    if root.is_file() and root.suffix == ".tar":
        return [("shard", str(root))]
    shards = list_shards(str(root))
    if shards:
        return [("shard", s) for s in shards]
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DinoflowError(f"{source} holds no .tar shards and no images ({', '.join(sorted(IMAGE_EXTS))})")
    return [("files", files[i : i + FILES_PER_UNIT]) for i in range(0, len(files), FILES_PER_UNIT)]


def check_training_data(source: str, what: str, *, max_pixels: int = 64_000_000,
                        limit: int = MAX_UNDECODABLE_RUN) -> list[tuple[str, object]]:
    """Discover the units of `source` and make sure an image decodes among its first `limit` samples.

    Returns the units (for `make_loader`); raises a DinoflowError naming `what` (the config key) and
    counting the undecodable samples otherwise. Stops at the first image, so good data costs one decode.
    """
    from dinoflow.data.decode import CorruptImage, decode_image

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
    raise DinoflowError(f"{what}={source}: no decodable image in {scope} ({n} undecodable: {counts}; e.g. {example}). "
                        f"Point {what} at curated shards (`dinoflow curate`) or a folder of images")


def _iter_unit(unit: tuple[str, object]) -> Iterator[tuple[str, bytes]]:
    kind, ref = unit
    if kind == "shard":
        from dinoflow.data.shards import iter_shard

        for s in iter_shard(str(ref)):
            yield s.key, s.data
    else:
        for path in ref:  # type: ignore[union-attr]
            try:
                data = Path(path).read_bytes()
            except OSError:  # unreadable or gone since discovery: counted as undecodable, like a corrupt file
                data = b""
            yield path, data


def to_square_uint8(img, size: int) -> torch.Tensor:
    """PIL RGB → uint8 [3, size, size]: shorter side resized to `size` (bicubic), centre crop.

    Random-resized crops are then taken from this square; for the square demo images it is the
    identity, for photos it trims the longer side's borders.
    """
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class TrainStream(IterableDataset):
    """Endless, seeded, rank- and worker-sharded stream of {"image": uint8 [3,S,S], "skipped": int}."""

    def __init__(self, source: str, *, load_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1, skip_batches: int = 0, max_pixels: int = 64_000_000,
                 units: list[tuple[str, object]] | None = None):
        self.source = source
        self.units = units if units is not None else discover_units(source)
        self.load_size, self.seed = load_size, seed
        self.rank, self.world = rank, world_size
        self.batch_size, self.skip_batches, self.max_pixels = batch_size, skip_batches, max_pixels

    def _slot(self) -> tuple[int, int, int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return wid, nw, self.rank * nw + wid, self.world * nw

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

    def __iter__(self):
        from dinoflow.data.decode import CorruptImage, decode_image

        wid, nw, slot, n_slots = self._slot()
        # batch i of the DataLoader comes from worker i % nw: skip this worker's share
        my_batches = max(0, (self.skip_batches - wid + nw - 1) // nw)
        to_skip = my_batches * self.batch_size
        epoch, skipped, bad_run, bad_total = 0, 0, 0, 0
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
                    skipped, bad_run, bad_total = skipped + 1, bad_run + 1, bad_total + 1
                    if bad_run >= MAX_UNDECODABLE_RUN:
                        raise DinoflowError(f"the training data {self.source} gave {bad_run} undecodable samples in a "
                                            f"row ({bad_total} on this rank so far): check or re-curate it") from None
                    continue
                decoded, bad_run = decoded + 1, 0
                yield {"image": to_square_uint8(img, self.load_size), "skipped": skipped, "epoch": epoch}
                skipped = 0
            if produced == 0:
                raise DinoflowError("the training data yielded no samples for this rank")
            if decoded == 0 and resumed_past == 0:
                raise DinoflowError(f"none of the {produced} samples this rank read from {self.source} in epoch "
                                    f"{epoch} decodes as an image ({bad_total} undecodable so far)")
            epoch += 1


def make_loader(source: str, *, load_size: int, seed: int, rank: int, world_size: int, batch_size: int,
                num_workers: int, skip_batches: int = 0,
                units: list[tuple[str, object]] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches {"image": uint8 [B,3,S,S], "skipped": [B], "epoch": [B]} forever. `units`: from
    `check_training_data` (saves listing the source twice)."""
    ds = TrainStream(source, load_size=load_size, seed=seed, rank=rank, world_size=world_size,
                     batch_size=batch_size, skip_batches=skip_batches, units=units)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, drop_last=True,
                        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    return iter(loader)
