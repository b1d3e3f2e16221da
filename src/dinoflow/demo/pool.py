"""The `demo-data` stage: a small uncurated pool with planted problems and a ground truth to score against.

Layout under `cfg.demo.out_dir` (default `data/demo`):

    pool/img_00000.png …      every pool item, names in a seeded random order that hide the kind
    seeds/class3_007.png …    `n_seeds_per_class` labelled MNIST training images per class
    eval/eval_0000.png …      the held-out MNIST images (evaluation set, relative-dedup set)
    ground_truth.json         the kind of every pool uid, seed/eval labels, totals

Pool kinds (ground_truth["pool"][uid]["kind"]):
- `original`   an MNIST-5k training image (4,000 of them);
- `digits`     an sklearn 8×8 digit upsampled to 28×28 (training split only, if `include_digits`);
- `exact_dup`  the same pixels as original `of`, stored differently (`variant`: byte copy, RGB PNG,
               uncompressed PNG, grey+opaque-alpha PNG);
- `near_dup`   original `of` after a small `transform` (cycling through `demo.near_dup_transforms`):
               shift by 1–2 px (zero fill), JPEG round trip at quality 65–75, Gaussian noise σ=6, or a
               1–2 px crop per side resized back to 28 px (bicubic). Raw-pixel cosine to the source:
               JPEG/noise ≥ 0.995, shift 0.27–0.9 (1.0 after re-aligning), crop+resize 0.64–0.9, while
               distinct MNIST originals reach 0.99+ with their nearest neighbour: shifted and rescaled
               copies need a shift/scale-robust descriptor, not raw pixels;
- `eval_copy`  an evaluation image `of` (an eval uid), exact or JPEG-round-tripped at quality 90;
- `junk`       uniform noise, a constant image, or rendered text (`junk_kind`);
- `corrupt`    a truncated PNG, zero bytes, random bytes, an HTML page, or a PNG header claiming
               10⁵×10⁵ pixels (`corrupt_kind`, and the `decode_image` reason it must produce).
Apart from exact duplicates (and corrupt files), every pool image has distinct pixels.

The MNIST split is always `mnist_split(0)` (the split the documented numbers use); `demo.seed` drives
every planted choice. The output is a pure function of the config: a rerun rewrites nothing that
is already identical and removes demo files that the new config no longer produces.
"""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dinoflow.config import Config, DemoConfig, stage_seed
from dinoflow.data.decode import pixel_hash
from dinoflow.demo.sources import digits_split, mnist_split
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_bytes, atomic_write_json
from dinoflow.tracking import log_artifact, log_metrics, stage_run

MNIST_SPLIT_SEED = 0
MNIST_TRAIN = 4000  # mnist_split: 5,000 images, 1,000 held out
SIDE = 28
EXACT_VARIANTS = ("byte_copy", "png_rgb", "png_uncompressed", "png_grey_alpha")
NEAR_TRANSFORMS = ("shift", "jpeg", "noise", "crop_resize")
JUNK_KINDS = ("noise", "blank", "text")
CORRUPT_KINDS = ("truncated", "empty", "random_bytes", "html", "decompression_bomb")
CORRUPT_REASON = {
    "truncated": "truncated",
    "empty": "empty",
    "random_bytes": "not_an_image",
    "html": "not_an_image",
    "decompression_bomb": "decompression_bomb",
}
EVAL_COPY_VARIANTS = ("exact", "jpeg")
# Names this stage writes; anything else found in its folders is refused rather than deleted.
_OWN_NAMES = {
    "pool": re.compile(r"img_\d{5}\.png"),
    "seeds": re.compile(r"class\d_\d{3}\.png"),
    "eval": re.compile(r"eval_\d{4}\.png"),
}
_TEMP_NAME = re.compile(r"\..+\.tmp")


# ---------------------------------------------------------------- encoders


def png_bytes(arr: np.ndarray, *, mode: str | None = None, compress_level: int = 6) -> bytes:
    """uint8 [H,W] (grey) or [H,W,C] → PNG bytes (deterministic for a given Pillow/zlib)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def jpeg_roundtrip(arr: np.ndarray, quality: int) -> np.ndarray:
    """Grey uint8 [H,W] → JPEG at `quality` → decoded grey uint8 [H,W]."""
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width×height grey pixels (a decompression-bomb stand-in).

    A real bomb inflates to gigabytes; the header alone is what a safe decoder must refuse, and
    building the real thing would cost the demo minutes.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4, 9)  # 4 rows of zeros: a plausible start
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- planted items


def _exact_variant(img: np.ndarray, variant: str) -> bytes:
    if variant == "byte_copy":
        return png_bytes(img)
    if variant == "png_rgb":
        return png_bytes(np.repeat(img[..., None], 3, axis=2), mode="RGB")
    if variant == "png_uncompressed":
        return png_bytes(img, compress_level=0)
    if variant == "png_grey_alpha":
        la = np.stack([img, np.full_like(img, 255)], axis=2)
        return png_bytes(la, mode="LA")
    raise ValueError(variant)


def _near_variant(img: np.ndarray, transform: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    if transform == "shift":
        while True:
            dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
            if dx or dy:
                break
        out = np.zeros_like(img)
        src = img[max(0, -dy) : SIDE - max(0, dy), max(0, -dx) : SIDE - max(0, dx)]
        out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
        return out, {"dx": dx, "dy": dy}
    if transform == "jpeg":
        q = int(rng.integers(65, 76))
        return jpeg_roundtrip(img, q), {"quality": q}
    if transform == "noise":
        sigma = 6.0
        noisy = img.astype(np.float64) + rng.normal(0.0, sigma, size=img.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), {"sigma": sigma}
    if transform == "crop_resize":
        left, top, right, bottom = (int(v) for v in rng.integers(1, 3, size=4))
        box = (left, top, SIDE - right, SIDE - bottom)
        resized = Image.fromarray(img, "L").crop(box).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        return np.asarray(resized), {"box": list(box)}
    raise ValueError(transform)


_WORDS = ("spam", "junk", "lorem", "ipsum", "ad", "sale", "404", "logo", "click", "free", "win", "zz", "qr", "txt")


def _junk(kind: str, rng: np.random.Generator, blank_values: list[int]) -> tuple[bytes, dict[str, Any]]:
    if kind == "noise":
        if rng.random() < 0.5:
            return png_bytes(rng.integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)), {"channels": 1}
        return png_bytes(rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8), mode="RGB"), {"channels": 3}
    if kind == "blank":
        v = blank_values.pop()
        return png_bytes(np.full((SIDE, SIDE), v, dtype=np.uint8)), {"value": v}
    if kind == "text":
        word = str(rng.choice(_WORDS))
        fg, bg = (255, 0) if rng.random() < 0.5 else (0, 255)
        img = Image.new("L", (SIDE, SIDE), bg)
        draw = ImageDraw.Draw(img)
        x, y = (int(v) for v in rng.integers(0, 8, size=2))
        draw.text((x, y), word, fill=fg, font=ImageFont.load_default())
        return png_bytes(np.asarray(img)), {"text": word}
    raise ValueError(kind)


def _corrupt(kind: str, rng: np.random.Generator, donor: np.ndarray) -> bytes:
    if kind == "truncated":
        good = png_bytes(donor)
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "random_bytes":
        return rng.integers(0, 256, size=int(rng.integers(200, 2000)), dtype=np.uint8).tobytes()
    if kind == "html":
        return b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n"
    if kind == "decompression_bomb":
        return bomb_png()
    raise ValueError(kind)


# ---------------------------------------------------------------- building


def _grey_hash(a: np.ndarray) -> str:
    """`pixel_hash` of a grey array as decode_image would return it (RGB), without a PNG round trip."""
    return pixel_hash(Image.fromarray(np.repeat(a[..., None], 3, axis=2), "RGB"))


def _cycle(options: tuple[str, ...], n: int) -> list[str]:
    return [options[i % len(options)] for i in range(n)]


def _check_counts(cfg: Config) -> None:
    d = cfg.demo
    if d.n_exact_dups + d.n_near_dups > MNIST_TRAIN:
        raise DinoflowError(
            f"demo.n_exact_dups + demo.n_near_dups = {d.n_exact_dups + d.n_near_dups} exceeds the {MNIST_TRAIN} "
            "MNIST training images they are made from: lower them"
        )
    if d.n_eval_copies > d.n_eval:
        raise DinoflowError(f"demo.n_eval_copies ({d.n_eval_copies}) exceeds demo.n_eval ({d.n_eval}): lower it")
    if d.n_junk > 600:
        raise DinoflowError(f"demo.n_junk ({d.n_junk}) is above 600, the most distinct junk images the demo makes")


Entry = tuple[bytes, dict[str, Any]]  # (file bytes, ground-truth record); record["_src"]: the entry it copies


def _plan(cfg: Config) -> dict[str, Any]:
    """Every output file's bytes and the ground truth, computed in memory (deterministic).

    One generator drives every planted choice, in a fixed order (duplicates, eval copies, junk,
    corrupt files, pool order, seeds): reordering the steps below changes the demo's bytes.
    """
    d = cfg.demo
    _check_counts(cfg)
    tr_x, tr_y, te_x, te_y = mnist_split(MNIST_SPLIT_SEED)
    te_x, te_y = te_x[: d.n_eval], te_y[: d.n_eval]
    rng = np.random.default_rng([stage_seed(d.seed), 20240229])
    eval_uids = [f"eval_{i:04d}.png" for i in range(len(te_x))]

    entries, greys = _clean_entries(d.include_digits, tr_x, tr_y)  # greys: pixels of every distinct image
    entries += _duplicate_entries(d, tr_x, tr_y, rng, greys)
    entries += _eval_copy_entries(d.n_eval_copies, te_x, te_y, eval_uids, rng, greys)
    entries += _junk_entries(d.n_junk, rng, {_grey_hash(a) for a in greys})
    entries += _corrupt_entries(d.n_corrupt, tr_x, rng)
    pool_files, pool_truth, train_uid = _place(entries, rng)
    seed_files, seed_truth = _seeds(d.n_seeds_per_class, tr_x, tr_y, train_uid, rng)
    eval_files = {uid: png_bytes(te_x[k]) for k, uid in enumerate(eval_uids)}
    eval_truth = {uid: {"label": int(te_y[k]), "mnist_test_index": k} for k, uid in enumerate(eval_uids)}

    kinds = [r["kind"] for r in pool_truth.values()]
    totals = {
        k: kinds.count(k) for k in ("original", "digits", "exact_dup", "near_dup", "eval_copy", "junk", "corrupt")
    }
    totals.update(pool=len(pool_truth), seeds=len(seed_truth), eval=len(eval_truth))
    truth = {
        "version": 1,
        # out_dir is left out so the same pool written elsewhere has the same bytes
        "config": {**d.model_dump(exclude={"out_dir"}), "mnist_split_seed": MNIST_SPLIT_SEED},
        "totals": totals,
        "pool": pool_truth,
        "seeds": seed_truth,
        "eval": eval_truth,
    }
    return {"files": {"pool": pool_files, "seeds": seed_files, "eval": eval_files}, "truth": truth}


def _clean_entries(include_digits: bool, tr_x: np.ndarray, tr_y: np.ndarray) -> tuple[list[Entry], list[np.ndarray]]:
    """The MNIST originals (and the sklearn digits): the entries and their grey pixels [28, 28]."""
    entries: list[Entry] = []
    greys: list[np.ndarray] = []
    for i in range(len(tr_x)):
        entries.append((png_bytes(tr_x[i]), {"kind": "original", "label": int(tr_y[i]), "mnist_train_index": i}))
        greys.append(tr_x[i])
    if include_digits:
        dx, dy, _, _ = digits_split(MNIST_SPLIT_SEED)
        for j in range(len(dx)):
            entries.append((png_bytes(dx[j]), {"kind": "digits", "label": int(dy[j]), "digits_train_index": j}))
            greys.append(dx[j])
    return entries, greys


def _duplicate_entries(
    d: DemoConfig, tr_x: np.ndarray, tr_y: np.ndarray, rng: np.random.Generator, greys: list[np.ndarray]
) -> list[Entry]:
    """Exact and near duplicates of distinct originals; near duplicates' pixels join `greys`."""
    entries: list[Entry] = []
    sources = rng.choice(len(tr_x), size=d.n_exact_dups + d.n_near_dups, replace=False)
    for src, variant in zip(sources[: d.n_exact_dups], _cycle(EXACT_VARIANTS, d.n_exact_dups)):
        rec = {"kind": "exact_dup", "_src": int(src), "variant": variant, "label": int(tr_y[src])}
        entries.append((_exact_variant(tr_x[src], variant), rec))
    for src, transform in zip(sources[d.n_exact_dups :], _cycle(tuple(d.near_dup_transforms), d.n_near_dups)):
        arr, params = _near_variant(tr_x[src], transform, rng)
        if np.array_equal(arr, tr_x[src]):  # cannot happen for these transforms on a real digit; be sure
            arr = jpeg_roundtrip(arr, 70)
        rec = {"kind": "near_dup", "_src": int(src), "transform": transform, "params": params, "label": int(tr_y[src])}
        entries.append((png_bytes(arr), rec))
        greys.append(arr)
    return entries


def _eval_copy_entries(
    n: int, te_x: np.ndarray, te_y: np.ndarray, eval_uids: list[str], rng: np.random.Generator, greys: list[np.ndarray]
) -> list[Entry]:
    """Copies of `n` distinct evaluation images (exact or JPEG'd); their pixels join `greys`."""
    entries: list[Entry] = []
    copies = rng.choice(len(te_x), size=n, replace=False)
    for k, variant in zip(copies, _cycle(EVAL_COPY_VARIANTS, n)):
        arr = te_x[k] if variant == "exact" else jpeg_roundtrip(te_x[k], 90)
        rec = {"kind": "eval_copy", "of": eval_uids[k], "variant": variant, "label": int(te_y[k])}
        entries.append((png_bytes(arr), rec))
        greys.append(arr)
    return entries


def _junk_entries(n: int, rng: np.random.Generator, seen: set[str]) -> list[Entry]:
    """`n` junk images whose pixels differ from every image in `seen` (pixel hashes) and each other."""
    entries: list[Entry] = []
    blank_values = [int(v) for v in rng.permutation(256)]
    for kind in _cycle(JUNK_KINDS, n):
        for _ in range(100):  # redraw the rare junk image that collides with an existing one
            data, params = _junk(kind, rng, blank_values)
            h = pixel_hash(Image.open(io.BytesIO(data)).convert("RGB"))
            if h not in seen:
                break
        else:
            raise DinoflowError(f"could not make {n} distinct junk images: lower demo.n_junk")
        seen.add(h)
        entries.append((data, {"kind": "junk", "junk_kind": kind, "params": params}))
    return entries


def _corrupt_entries(n: int, tr_x: np.ndarray, rng: np.random.Generator) -> list[Entry]:
    entries: list[Entry] = []
    for kind in _cycle(CORRUPT_KINDS, n):
        donor = tr_x[int(rng.integers(len(tr_x)))]
        entries.append(
            (
                _corrupt(kind, rng, donor),
                {"kind": "corrupt", "corrupt_kind": kind, "expected_reason": CORRUPT_REASON[kind]},
            )
        )
    return entries


def _place(
    entries: list[Entry], rng: np.random.Generator
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]], dict[int, str]]:
    """Shuffle the entries into pool uids (which hide the kind); resolve each copy's `_src` to the
    uid of its original. → (pool files, pool truth, MNIST train index → uid of its original)."""
    order = rng.permutation(len(entries))  # order[k] = entry placed at position k
    pool_files: dict[str, bytes] = {}
    pool_truth: dict[str, dict[str, Any]] = {}
    train_uid: dict[int, str] = {}
    for pos, e in enumerate(order):
        data, rec = entries[e]
        uid = f"img_{pos:05d}.png"
        pool_files[uid] = data
        pool_truth[uid] = dict(rec)
        if rec["kind"] == "original":
            train_uid[rec["mnist_train_index"]] = uid
    for rec in pool_truth.values():
        if "_src" in rec:
            rec["of"] = train_uid[rec.pop("_src")]
    return pool_files, pool_truth, train_uid


def _seeds(
    n_per_class: int, tr_x: np.ndarray, tr_y: np.ndarray, train_uid: dict[int, str], rng: np.random.Generator
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """`n_per_class` labelled training images per class (also in the pool as originals)."""
    seed_files: dict[str, bytes] = {}
    seed_truth: dict[str, dict[str, Any]] = {}
    for label in range(10):
        idx = np.flatnonzero(tr_y == label)
        if len(idx) < n_per_class:
            raise DinoflowError(f"class {label} has {len(idx)} training images, fewer than demo.n_seeds_per_class")
        for n, i in enumerate(np.sort(rng.choice(idx, size=n_per_class, replace=False))):
            uid = f"class{label}_{n:03d}.png"
            seed_files[uid] = png_bytes(tr_x[i])
            seed_truth[uid] = {"label": label, "pool_uid": train_uid[int(i)], "mnist_train_index": int(i)}
    return seed_files, seed_truth


def _check_foreign(folder: Path, pattern: re.Pattern[str]) -> None:
    """Refuse to touch a folder holding files this stage did not write (a mistyped out_dir)."""
    if not folder.is_dir():
        return
    foreign = [
        p.name
        for p in sorted(folder.iterdir())
        if not (p.is_file() and (pattern.fullmatch(p.name) or _TEMP_NAME.fullmatch(p.name)))
    ]
    if foreign:
        raise DinoflowError(
            f"{folder} holds files the demo did not write ({', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}): "
            "move them away or set demo.out_dir to another folder"
        )


def _sync_dir(folder: Path, files: dict[str, bytes], pattern: re.Pattern[str]) -> dict[str, int]:
    """Make `folder` hold exactly `files`: write what differs, remove our own stale files."""
    _check_foreign(folder, pattern)
    folder.mkdir(parents=True, exist_ok=True)
    stale = [p for p in sorted(folder.iterdir()) if p.name not in files]
    written = unchanged = 0
    for name, data in files.items():
        path = folder / name
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            unchanged += 1
            continue
        atomic_write_bytes(path, data)
        written += 1
    for p in stale:
        p.unlink()
    return {"written": written, "unchanged": unchanged, "removed": len(stale)}


def build_demo(cfg: Config) -> dict[str, Any]:
    """Stage `demo-data`: write the demo pool, seeds, eval set and ground truth; return counts.

    Output: `<demo.out_dir>/{pool,seeds,eval}/*.png` and `<demo.out_dir>/ground_truth.json`.
    """
    t0 = time.perf_counter()
    out = Path(cfg.demo.out_dir)
    _check_counts(cfg)
    for folder, pattern in _OWN_NAMES.items():
        _check_foreign(out / folder, pattern)
    with stage_run("demo-data", cfg):
        plan = _plan(cfg)
        io_counts = {"written": 0, "unchanged": 0, "removed": 0}
        for folder, files in plan["files"].items():
            for k, v in _sync_dir(out / folder, files, _OWN_NAMES[folder]).items():
                io_counts[k] += v
        # Written last: its presence means the folders above are complete.
        atomic_write_json(out / "ground_truth.json", plan["truth"])
        totals = plan["truth"]["totals"]
        log_metrics({f"demo_{k}": float(v) for k, v in totals.items()})
        log_artifact(out / "ground_truth.json")
    return {
        "out_dir": str(out),
        "ground_truth": str(out / "ground_truth.json"),
        **totals,
        "files_written": io_counts["written"],
        "files_unchanged": io_counts["unchanged"],
        "files_removed": io_counts["removed"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
