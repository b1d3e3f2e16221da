"""Curation report: `report_dir/curation.json`, `curation.html` and the PNGs it shows.

The JSON holds the funnel (items remaining after each step, in the order the steps ran), the
images kept and those dropped per reason, the thresholds used, cluster sizes and balance entropy, and what the
run did (index, partitions and shards reused, seconds per step). Scoring a run against a planted
ground truth is the demo's business (`dinoflow.demo.truth`), not the library's.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from dinoflow.config import CurateConfig
from dinoflow.curation.report_data import HIST_EDGES, Summary
from dinoflow.data.statuses import KEPT, STATUSES
from dinoflow.io import atomic_path, atomic_write_json, atomic_write_text

# ---------------------------------------------------------------- pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)


def _funnel_png(funnel: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = [f["step"] for f in funnel]
    vals = [f["remaining"] for f in funnel]
    ax.barh(range(len(steps))[::-1], vals, color="#4c78a8")
    ax.set_yticks(range(len(steps))[::-1], steps)
    for y, v in zip(range(len(steps))[::-1], vals):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("items remaining after the step")
    ax.set_title("curation funnel")
    _save(fig, path)


def _cluster_png(sizes: np.ndarray, kept_sizes: np.ndarray, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    order = np.argsort(-sizes, kind="stable")
    ax.bar(np.arange(len(sizes)), sizes[order], color="#bbbbbb", label="before sampling")
    ax.bar(np.arange(len(sizes)), kept_sizes[order], color="#4c78a8", label="kept")
    ax.set_xlabel("level-0 cluster (sorted by size)")
    ax.set_ylabel("items")
    ax.legend()
    ax.set_title("cluster sizes")
    _save(fig, path)


def _sim_png(values: dict[str, tuple[np.ndarray, float | None]], path: Path) -> None:
    """values: title → (counts on HIST_EDGES, threshold)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.2), squeeze=False)
    for ax, (title, (counts, thr)) in zip(axes[0], values.items()):
        nz = np.flatnonzero(counts)
        if len(nz):
            lo = min(float(HIST_EDGES[nz[0]]), thr if thr is not None else 1.0)
            first = int(np.searchsorted(HIST_EDGES, lo, side="right")) - 1
            ax.bar(
                HIST_EDGES[first:-1],
                counts[first:],
                width=np.diff(HIST_EDGES)[first:],
                align="edge",
                color="#4c78a8",
                log=True,
            )
        if thr is not None:
            ax.axvline(thr, color="#e45756", linestyle="--", label=f"threshold {thr:g}")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cosine similarity")
    _save(fig, path)


def _thumbnail_rows(rows: list[tuple[str, list]]) -> list[tuple[str, list[Image.Image]]]:
    """A grid's (label, images) rows without their missing images; [] when no row has an image
    (then there is no picture to draw)."""
    rows = [(label, [im for im in imgs if im is not None]) for label, imgs in rows]
    return rows if any(imgs for _, imgs in rows) else []


def _grid_png(rows_of_imgs: list[tuple[str, list[Image.Image]]], path: Path, cell: int = 48) -> None:
    """rows_of_imgs from `_thumbnail_rows` (at least one image)."""
    plt = _plt()
    ncol = max(len(imgs) for _, imgs in rows_of_imgs)
    fig, axes = plt.subplots(
        len(rows_of_imgs), ncol, figsize=(max(ncol * 0.9, 2.6), len(rows_of_imgs) * 1.2), squeeze=False
    )
    for r, (label, imgs) in enumerate(rows_of_imgs):
        for cidx in range(ncol):
            ax = axes[r][cidx]
            ax.axis("off")
            if cidx < len(imgs):
                ax.imshow(np.asarray(imgs[cidx].convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)))
        axes[r][0].set_title(label, fontsize=7, loc="left")
    _save(fig, path)


# ---------------------------------------------------------------- the report


@dataclass
class Picture:
    """One PNG of the report: its `title` in the HTML, its `file` in report_dir, and how to draw it."""

    title: str
    file: str
    draw: Callable[[Path], Any]


MAX_PICTURES = 5  # what `pictures` can return: ranks past it draw nothing and need no summary


def pictures(c: CurateConfig, s: Summary, funnel: list[dict]) -> list[Picture]:
    """The report's PNGs in reading order (at most MAX_PICTURES); which ones exist depends only on the summary."""
    out = [Picture("funnel", "curation_funnel.png", lambda p: _funnel_png(funnel, p))]
    if len(s.level0_sizes):
        out.append(
            Picture("cluster sizes", "curation_clusters.png", lambda p: _cluster_png(s.level0_sizes, s.level0_kept, p))
        )
    hists = {
        "nearest other pool image (near-dup threshold)": (s.hists["nn_similarity"], c.near_dup_threshold),
        "nearest eval image (relative-dedup threshold)": (s.hists["eval_similarity"], c.eval_dup_threshold),
        "nearest seed": (s.hists["seed_similarity"], None),
    }
    out.append(Picture("similarity histograms", "curation_similarity.png", lambda p: _sim_png(hists, p)))
    cluster_rows, pair_rows = _thumbnail_rows(s.cluster_thumbs), _thumbnail_rows(s.pair_thumbs)
    if cluster_rows:
        out.append(Picture("samples per cluster", "curation_clusters_grid.png", lambda p: _grid_png(cluster_rows, p)))
    if pair_rows:
        out.append(
            Picture("near-duplicate pairs (kept, dropped)", "curation_dup_pairs.png", lambda p: _grid_png(pair_rows, p))
        )
    return out


def draw_pictures(pics: list[Picture], rdir: Path, rank: int = 0, world: int = 1) -> None:
    """Draw this rank's share of `pics` (every world-th, from its rank): matplotlib is single-threaded,
    so under torchrun the ranks draw side by side instead of rank 0 alone."""
    rdir.mkdir(parents=True, exist_ok=True)
    for pic in pics[rank::world]:
        pic.draw(rdir / pic.file)


def write_report(
    c: CurateConfig,
    s: Summary,
    *,
    funnel: list[dict],
    pics: list[Picture],
    cluster_info: dict,
    retrieval_info: dict,
    extra: dict,
) -> dict[str, Any]:
    """Write curation.json and curation.html into `c.report_dir`, naming `pics` (drawn by
    `draw_pictures` before); returns a short summary."""
    rdir = Path(c.report_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    clusters: dict[str, Any] = dict(cluster_info)
    if len(s.level0_sizes):
        clusters.update(
            level0_sizes=[int(v) for v in s.level0_sizes], level0_kept_sizes=[int(v) for v in s.level0_kept]
        )
    summary: dict[str, Any] = {
        "funnel": funnel,
        "kept": int(s.counts[KEPT]),
        "dropped": {k: int(s.counts[k]) for k in STATUSES if k != KEPT},
        "drop_details": s.details,
        "thresholds": {
            "near_dup_threshold": c.near_dup_threshold,
            "eval_dup_threshold": c.eval_dup_threshold,
            "knn_k": c.knn_k,
            "min_side": c.min_side,
            "min_std": c.min_std,
            "min_autocorr": c.min_autocorr,
            "retrieval_min_similarity": c.retrieval_min_similarity,
        },
        "retrieval": retrieval_info,
        "clusters": clusters,
        "balance_entropy": clusters.get("entropy_kept"),
        **extra,
    }
    summary["pngs"] = {p.title: p.file for p in pics}
    atomic_write_json(rdir / "curation.json", summary)
    atomic_write_text(rdir / "curation.html", _html(summary))
    short = {k: v for k, v in summary.items() if k not in ("clusters", "shards", "skipped_files")}
    short["n_shards"] = len(summary.get("shards", []))
    short["report"] = str(rdir / "curation.json")
    return short


def _table(d: dict) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in d.items()
    )
    return f"<table>{cells}</table>"


def _html(s: dict) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dinoflow curation report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}</style></head><body>",
        "<h1>Curation report</h1>",
        "<h2>Funnel</h2>",
        _table({f["step"]: f["remaining"] for f in s["funnel"]}),
        f"<h2>Kept: {s['kept']}; dropped, by reason</h2>",
        _table(s["dropped"]),
        "<h2>Thresholds</h2>",
        _table(s["thresholds"]),
    ]
    parts += ["<h2>Balance</h2>", _table({k: v for k, v in s["clusters"].items() if not k.startswith("level0")})]
    for title, png in s["pngs"].items():
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{html.escape(png)}' alt='{html.escape(title)}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
