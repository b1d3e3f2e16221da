"""Curation report: `report_dir/curation.json`, `curation.html` and the PNGs it shows.

The JSON holds the funnel (items remaining after each step), counts per status, the thresholds
used, cluster sizes and balance entropy, and — when a `ground_truth.json` (the demo's format) sits
in a source folder or its parent — a `ground_truth` section scoring the run against it:

- duplicate_recall / duplicate_precision: over items dropped as `exact_dup` or `near_dup`. A drop
  is correct when the item and the item it duplicates belong to the same planted group (an
  original and its copies); recall divides by the number of planted copies, precision by the
  number of drops.
- junk_kept_fraction: planted junk that ended up `kept`.
- corrupt_reported / corrupt_total: planted corrupt files reported as `corrupt`.
- eval_copies_removed / eval_copies_total: planted eval copies dropped as `eval_contamination`.
- manifest_uids / input_uids: distinct uids in the manifest vs. items the sources yielded.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinoflow.io import atomic_path, atomic_write_json, atomic_write_text

DUP_STATUSES = ("exact_dup", "near_dup")


def find_ground_truth(sources: list[str]) -> Path | None:
    """`ground_truth.json` in the (single local) source folder or its parent, else None."""
    if len(sources) != 1 or sources[0].startswith("s3://"):
        return None
    src = Path(sources[0])
    for cand in (src / "ground_truth.json", src.parent / "ground_truth.json"):
        if cand.is_file():
            return cand
    return None


def score_ground_truth(rows: list[Any], truth: dict[str, Any], input_uids: int) -> dict[str, Any]:
    """Score manifest rows (uid = pool-relative path) against the demo's `ground_truth.json` (see module docstring)."""
    pool = truth.get("pool", {})
    kind = {u: r.get("kind") for u, r in pool.items()}
    group = {u: (r.get("of") if r.get("kind") in DUP_STATUSES else u) for u, r in pool.items()}
    by_uid = {r.path: r for r in rows}
    n_true = sum(k in DUP_STATUSES for k in kind.values())
    drops = [r for r in rows if r.status in DUP_STATUSES]
    uid_to_path = {r.uid: r.path for r in rows}
    tp = 0
    false_pairs = []
    for r in drops:
        other = uid_to_path.get(r.duplicate_of, "")
        if r.path in group and group[r.path] == group.get(other, None):
            tp += 1
        else:
            false_pairs.append([r.path, other, kind.get(r.path), kind.get(other)])
    per_kind_status: dict[str, dict[str, int]] = {}
    for u, k in kind.items():
        st = by_uid[u].status if u in by_uid else "missing"
        per_kind_status.setdefault(k, {}).setdefault(st, 0)
        per_kind_status[k][st] += 1
    junk = [u for u, k in kind.items() if k == "junk"]
    corrupt = [u for u, k in kind.items() if k == "corrupt"]
    copies = [u for u, k in kind.items() if k == "eval_copy"]
    return {
        "duplicate_recall": tp / n_true if n_true else 1.0,
        "duplicate_precision": tp / len(drops) if drops else 1.0,
        "duplicates_planted": n_true,
        "duplicates_dropped": len(drops),
        "duplicates_correct": tp,
        "false_duplicate_examples": false_pairs[:20],
        "junk_total": len(junk),
        "junk_kept": sum(by_uid[u].status == "kept" for u in junk if u in by_uid),
        "junk_kept_fraction": (sum(by_uid[u].status == "kept" for u in junk if u in by_uid) / len(junk)) if junk else 0.0,
        "corrupt_total": len(corrupt),
        "corrupt_reported": sum(by_uid[u].status == "corrupt" for u in corrupt if u in by_uid),
        "eval_copies_total": len(copies),
        "eval_copies_removed": sum(by_uid[u].status == "eval_contamination" for u in copies if u in by_uid),
        "manifest_uids": len({r.uid for r in rows}),
        "input_uids": input_uids,
        "truth_uids_missing_from_manifest": sum(u not in by_uid for u in kind),
        "status_by_kind": per_kind_status,
    }


def wanted_thumbnails(rows: list[Any], cluster_ids: np.ndarray, n: int) -> set[str]:
    """uids whose images the report shows: `n` kept items of each of the largest level-0 clusters, and `n` duplicate pairs."""
    if n <= 0:
        return set()
    want: set[str] = set()
    for cl, members in _largest_clusters(rows, cluster_ids, n_clusters=8):
        want.update(rows[i].uid for i in members[:n])
    for r in [r for r in rows if r.status == "near_dup"][:n]:
        want.update((r.uid, r.duplicate_of))
    return want


def _largest_clusters(rows: list[Any], cluster_ids: np.ndarray, n_clusters: int) -> list[tuple[int, list[int]]]:
    if cluster_ids.shape[1] == 0:
        return []
    members: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.status == "kept" and cluster_ids[i, 0] >= 0:
            members.setdefault(int(cluster_ids[i, 0]), []).append(i)
    return sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:n_clusters]


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
    plt = _plt()
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.2), squeeze=False)
    for ax, (title, (v, thr)) in zip(axes[0], values.items()):
        v = v[np.isfinite(v)]
        if len(v):
            lo = float(min(v.min(), thr if thr is not None else 1.0))
            ax.hist(v, bins=np.linspace(lo, 1.0, 60), color="#4c78a8", log=True)
        if thr is not None:
            ax.axvline(thr, color="#e45756", linestyle="--", label=f"threshold {thr:g}")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cosine similarity")
    _save(fig, path)


def _grid_png(rows_of_imgs: list[tuple[str, list[Image.Image]]], path: Path, cell: int = 48) -> bool:
    if not rows_of_imgs:
        return False
    plt = _plt()
    ncol = max(len(imgs) for _, imgs in rows_of_imgs)
    if ncol == 0:
        return False
    fig, axes = plt.subplots(len(rows_of_imgs), ncol, figsize=(max(ncol * 0.9, 2.6), len(rows_of_imgs) * 1.2), squeeze=False)
    for r, (label, imgs) in enumerate(rows_of_imgs):
        for cidx in range(ncol):
            ax = axes[r][cidx]
            ax.axis("off")
            if cidx < len(imgs):
                ax.imshow(np.asarray(imgs[cidx].convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)))
        axes[r][0].set_title(label, fontsize=7, loc="left")
    _save(fig, path)
    return True


# ---------------------------------------------------------------- the report


def write_report(
    c: Any, *, rows: list[Any], funnel: list[dict], cluster_ids: np.ndarray, sims: dict[str, np.ndarray], near: Any,
    emb_rows: list[int], cluster_info: dict, retrieval_info: dict, thumbs: dict[str, Image.Image], extra: dict,
) -> dict[str, Any]:
    """Write curation.json / curation.html / PNGs into `c.report_dir`; returns the JSON content."""
    rdir = Path(c.report_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(r.status == s for r in rows) for s in
              ("kept", "corrupt", "junk", "exact_dup", "near_dup", "eval_contamination", "not_retrieved", "not_sampled")}
    details: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.status in ("corrupt", "junk"):
            key = r.detail.split(":")[0]
            details.setdefault(r.status, {}).setdefault(key, 0)
            details[r.status][key] += 1
    n_levels = cluster_ids.shape[1]
    clusters: dict[str, Any] = dict(cluster_info)
    if n_levels:
        l0 = cluster_ids[:, 0]
        k0 = int(l0.max()) + 1 if (l0 >= 0).any() else 0
        sizes = np.bincount(l0[l0 >= 0], minlength=k0) if k0 else np.zeros(0, np.int64)
        kept_mask = np.array([r.status == "kept" for r in rows])
        kept_sizes = np.bincount(l0[(l0 >= 0) & kept_mask], minlength=k0) if k0 else np.zeros(0, np.int64)
        clusters.update(
            level0_sizes=[int(v) for v in sizes], level0_kept_sizes=[int(v) for v in kept_sizes],
            per_level_clusters=[int(cluster_ids[:, lvl].max()) + 1 for lvl in range(n_levels)],
        )
    else:
        sizes = kept_sizes = np.zeros(0, np.int64)
    summary: dict[str, Any] = {
        "funnel": funnel,
        "counts": counts,
        "drop_details": details,
        "thresholds": {
            "near_dup_threshold": c.near_dup_threshold, "eval_dup_threshold": c.eval_dup_threshold, "knn_k": c.knn_k,
            "min_side": c.min_side, "min_std": c.min_std, "min_autocorr": c.min_autocorr,
            "retrieval_min_similarity": c.retrieval_min_similarity,
        },
        "retrieval": retrieval_info,
        "clusters": clusters,
        "balance_entropy": clusters.get("entropy_kept"),
        "near_dup_components": int(near.n_components),
        "near_dup_edges": int(len(near.edge_a)),
        **extra,
    }
    gt_path = find_ground_truth(list(c.sources))
    if gt_path is not None:
        truth = json.loads(gt_path.read_text())
        summary["ground_truth"] = {"file": str(gt_path), **score_ground_truth(rows, truth, extra["input_items"])}

    pngs: dict[str, str] = {}
    _funnel_png(funnel, rdir / "curation_funnel.png")
    pngs["funnel"] = "curation_funnel.png"
    if len(sizes):
        _cluster_png(sizes, kept_sizes, rdir / "curation_clusters.png")
        pngs["cluster sizes"] = "curation_clusters.png"
    _sim_png(
        {
            "nearest other pool image (near-dup threshold)": (sims["nn_similarity"], c.near_dup_threshold),
            "nearest eval image (relative-dedup threshold)": (sims["eval_similarity"], c.eval_dup_threshold),
            "nearest seed": (sims["seed_similarity"], None),
        },
        rdir / "curation_similarity.png",
    )
    pngs["similarity histograms"] = "curation_similarity.png"
    grid = []
    for cl, members in _largest_clusters(rows, cluster_ids, 8):
        imgs = [thumbs[rows[i].uid] for i in members[: c.report_images] if rows[i].uid in thumbs]
        grid.append((f"cluster {cl} ({len(members)} kept)", imgs))
    if _grid_png(grid, rdir / "curation_clusters_grid.png"):
        pngs["samples per cluster"] = "curation_clusters_grid.png"
    pairs = []
    for r in [r for r in rows if r.status == "near_dup"][: c.report_images]:
        if r.uid in thumbs and r.duplicate_of in thumbs:
            pairs.append((f"{r.uid} ~ {r.duplicate_of}", [thumbs[r.duplicate_of], thumbs[r.uid]]))
    if _grid_png(pairs, rdir / "curation_dup_pairs.png"):
        pngs["near-duplicate pairs (kept, dropped)"] = "curation_dup_pairs.png"
    summary["pngs"] = pngs
    atomic_write_json(rdir / "curation.json", summary)
    atomic_write_text(rdir / "curation.html", _html(summary))
    short = {k: v for k, v in summary.items() if k not in ("clusters", "shards", "skipped_files")}
    if "ground_truth" in short:
        short["ground_truth"] = {k: v for k, v in short["ground_truth"].items() if k not in ("false_duplicate_examples", "status_by_kind")}
    short["n_shards"] = len(summary.get("shards", []))
    short["report"] = str(rdir / "curation.json")
    return short


def _table(d: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>" for k, v in d.items())
    return f"<table>{cells}</table>"


def _html(s: dict) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dinoflow curation report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}</style></head><body>",
        "<h1>Curation report</h1>",
        "<h2>Funnel</h2>", _table({f["step"]: f["remaining"] for f in s["funnel"]}),
        "<h2>Counts by status</h2>", _table(s["counts"]),
        "<h2>Thresholds</h2>", _table(s["thresholds"]),
    ]
    if "ground_truth" in s:
        gt = {k: v for k, v in s["ground_truth"].items() if k not in ("false_duplicate_examples", "status_by_kind")}
        parts += ["<h2>Scored against the planted ground truth</h2>", _table(gt)]
    parts += ["<h2>Balance</h2>", _table({k: v for k, v in s["clusters"].items() if not k.startswith("level0")})]
    for title, png in s["pngs"].items():
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{html.escape(png)}' alt='{html.escape(title)}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
