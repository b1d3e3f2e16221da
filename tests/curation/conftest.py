"""A tiny image pool and a tiny curate config for the stage-level curation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dinoflow.config import load_config


def shape_image(i: int, size: int = 24) -> Image.Image:
    """A small structured image (passes the junk guards); different i give different images."""
    rng = np.random.default_rng(i)
    img = Image.new("L", (size, size), int(rng.integers(0, 60)))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(4, 9, 2)
        d.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=int(rng.integers(150, 256)))
    return img.convert("RGB")


def write_pool(root: Path, n: int = 30, copies: int = 3) -> Path:
    """n distinct images `img_XXX.png`, plus `zcopy_j.png` (sorted last) = exact copies of the first images."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape_image(i).save(root / f"img_{i:03d}.png")
    for j in range(copies):
        (root / f"zcopy_{j}.png").write_bytes((root / f"img_{j:03d}.png").read_bytes())
    return root


def tiny_cfg(pool: Path | list, out: Path, *extra: str):
    sources = pool if isinstance(pool, list) else [pool]
    return load_config(
        None,
        [
            f"curate.sources=[{','.join(str(s) for s in sources)}]",
            "curate.seeds=null",
            "curate.eval_sets=[]",
            "curate.retrieval=none",
            f"curate.out_dir={out}/curated",
            f"curate.report_dir={out}/reports",
            "curate.chunk_size=8",
            "curate.shard_size=10",
            "curate.max_side=16",
            "curate.embed_size=12",
            "curate.kmeans_levels=[4,2]",
            "curate.kmeans_iters=5",
            "curate.report_images=2",
            "tracking.enabled=false",
            *extra,
        ],
    )


@pytest.fixture
def pool(tmp_path) -> Path:
    return write_pool(tmp_path / "pool")
