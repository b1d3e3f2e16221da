"""Evaluation outputs: `eval.json` (fixed schema), `eval.md` (the same as a table), and PNG figures.

eval.json — every accuracy is a fraction in [0, 1]:

    {model: {dataset: {
        "knn_top1": <top-1 of k = 20>,
        "knn": {"10": top-1, "20": …, "100": …, "200": …},
        "knn_top5": <top-5 of k = 20>,
        "linear_top1": …, "linear_best": {"n_last_blocks": 4, "avgpool": true, "lr": 0.01},
        "logreg_top1": …}},
     "_dense": {model: {dataset: …}},      # the dense probes (evaluation/dense_report.py), when run
     "_provenance": {                      # what was evaluated (register checks it)
        "models": {model: {"path": …, "sha256": <of the backbone file>}},
        "datasets": {dataset: {"fingerprint": <sha256 of the splits + k-NN protocol>,
                               "n_train": …, "n_test": …, "n_classes": …}}}}

Figures: the first three PCA components of a model's patch features as RGB (as in the DINOv2
paper's figures) and a 2-D PCA map of CLS features coloured by class.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dinoflow.evaluation.dense_report import DENSE_KEY, check_dense_section, render_dense_markdown
from dinoflow.io import atomic_write_bytes, atomic_write_json, atomic_write_text

REPORT_K = 20
ENTRY_KEYS = ("knn_top1", "knn", "knn_top5", "linear_top1", "linear_best", "logreg_top1")
PROVENANCE_KEY = "_provenance"  # not a model: names starting with "_" are reserved


def report_k(ks: Sequence[int]) -> int:
    """The k whose accuracy is the headline `knn_top1`: 20 (the paper's), else the closest requested."""
    return REPORT_K if REPORT_K in ks else min(ks, key=lambda k: (abs(k - REPORT_K), k))


def eval_entry(
    knn: Mapping[int, Mapping[str, float]],
    linear_top1: float | None,
    linear_best: Mapping[str, Any] | None,
    logreg_top1: float | None,
) -> dict[str, Any]:
    """One {model: {dataset: entry}} cell from `knn_accuracy` output and the probes' results."""
    k = report_k(list(knn))
    return {
        "knn_top1": float(knn[k]["top1"]),
        "knn": {str(kk): float(v["top1"]) for kk, v in sorted(knn.items())},
        "knn_top5": float(knn[k]["top5"]),
        "linear_top1": None if linear_top1 is None else float(linear_top1),
        "linear_best": None if linear_best is None else dict(linear_best),
        "logreg_top1": None if logreg_top1 is None else float(logreg_top1),
    }


def split_eval_json(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """eval.json's content → ({model: {dataset: entry}}, the `_provenance` record or None).

    Keys starting with "_" are sections, never models (`_provenance`, `_dense`)."""
    models = {k: v for k, v in obj.items() if not k.startswith("_")}
    return models, obj.get(PROVENANCE_KEY)


def _check_provenance(prov: Any) -> None:
    if not isinstance(prov, Mapping) or not isinstance(prov.get("models"), Mapping):
        raise ValueError(
            f"eval report {PROVENANCE_KEY}: must be {{'models': {{name: {{'path', 'sha256'}}}}, 'datasets': …}}"
        )
    for name, rec in prov["models"].items():
        if not isinstance(rec, Mapping) or not isinstance(rec.get("sha256"), str) or len(rec["sha256"]) != 64:
            raise ValueError(f"eval report {PROVENANCE_KEY}.models.{name}: needs a sha256 hex digest; got {rec!r}")


def check_eval_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError unless `report` has the eval.json shape (accuracies in [0, 1])."""
    if not isinstance(report, Mapping) or not report:
        raise ValueError("eval report must be a non-empty mapping of models")
    models, prov = split_eval_json(report)
    if prov is not None:
        _check_provenance(prov)
    if DENSE_KEY in report:
        check_dense_section(report[DENSE_KEY])
    if not models:
        raise ValueError("eval report must be a non-empty mapping of models")
    for model, per_ds in models.items():
        if not isinstance(per_ds, Mapping) or not per_ds:
            raise ValueError(f"eval report: {model!r} must map datasets to entries")
        for ds, entry in per_ds.items():
            where = f"eval report {model}/{ds}"
            if set(entry) != set(ENTRY_KEYS):
                raise ValueError(f"{where}: keys {sorted(entry)} != {sorted(ENTRY_KEYS)}")
            accs = [entry["knn_top1"], entry["knn_top5"], *entry["knn"].values()]
            accs += [v for v in (entry["linear_top1"], entry["logreg_top1"]) if v is not None]
            if not all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in accs):
                raise ValueError(f"{where}: accuracies must be fractions in [0, 1]; got {accs}")
            if not all(isinstance(k, str) and k.isdigit() for k in entry["knn"]):
                raise ValueError(f"{where}: knn keys must be k as strings; got {list(entry['knn'])}")


def write_eval_json(
    path: str | Path,
    report: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    dense: Mapping[str, Any] | None = None,
) -> Path:
    """Write eval.json: the model results, plus `_dense` and `_provenance` (what was evaluated) when given."""
    out = dict(report)
    if dense:
        out[DENSE_KEY] = dict(dense)
    if provenance is not None:
        out[PROVENANCE_KEY] = dict(provenance)
    check_eval_report(out)
    atomic_write_json(path, out)
    return Path(path)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def render_markdown(report: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str:
    """eval.json as Markdown tables (one per dataset), with the run's notes underneath."""
    meta = meta or {}
    lines = ["# Evaluation (frozen features)", ""]
    lines.append(
        "Accuracies are fractions in [0, 1] on each dataset's test split. Hyper-parameters "
        "(linear LR / blocks / avgpool, logistic-regression C) were chosen on a validation "
        "split carved from the train split, never on the test split."
    )
    lines.append("")
    datasets = list(dict.fromkeys(ds for per in report.values() for ds in per))
    for ds in datasets:
        models = [m for m in report if ds in report[m]]
        ks = list(next(iter(report[m][ds]["knn"] for m in models)))
        info = (meta.get("datasets") or {}).get(ds, {})
        sizes = f" ({info['n_train']} train / {info['n_test']} test)" if "n_train" in info else ""
        lines += [f"## {ds}{sizes}", ""]
        head = [
            "model",
            "k-NN top-1",
            *[f"k={k}" for k in ks],
            "k-NN top-5",
            "linear top-1",
            "linear choice",
            "logreg top-1",
        ]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for m in models:
            e = report[m][ds]
            lb = e["linear_best"]
            choice = (
                "–"
                if not lb
                else f"{lb['n_last_blocks']} blk, avgpool {'on' if lb['avgpool'] else 'off'}, lr {lb['lr']:g}"
            )
            row = [
                m,
                _pct(e["knn_top1"]),
                *[_pct(e["knn"][k]) for k in ks],
                _pct(e["knn_top5"]),
                _pct(e["linear_top1"]),
                choice,
                _pct(e["logreg_top1"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    notes = list(meta.get("notes") or [])
    if meta.get("models"):
        lines += ["## Models", ""]
        lines += [f"- **{name}**: {desc}" for name, desc in meta["models"].items()]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if meta.get("figures"):
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in meta["figures"]] + [""]
    return "\n".join(lines)


def write_markdown(
    path: str | Path,
    report: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    dense: Mapping[str, Any] | None = None,
) -> Path:
    text = render_markdown(report, meta)
    if dense:
        text += "\n" + render_dense_markdown(dense, {"datasets": (meta or {}).get("dense_datasets", {})})
    atomic_write_text(path, text)
    return Path(path)


# ---------------------------------------------------------------- figures


def _pca(x: torch.Tensor, n: int) -> torch.Tensor:
    """Project rows of x [M, D] on their first n principal components (sign fixed: max |loading| > 0)."""
    xc = x.double() - x.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:n]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * signs
    out = xc @ comps.T
    if out.shape[1] < n:  # fewer samples/dims than components
        out = torch.cat([out, out.new_zeros(len(out), n - out.shape[1])], dim=1)
    return out.float()


def _minmax(v: torch.Tensor) -> torch.Tensor:
    lo, hi = v.min(dim=0).values, v.max(dim=0).values
    return (v - lo) / (hi - lo).clamp_min(1e-12)


def pca_rgb(grids: torch.Tensor, foreground_threshold: float | None = None) -> torch.Tensor:
    """Patch features [B, h, w, D] → RGB [B, h, w, 3] in [0, 1] from a PCA fitted jointly on all patches.

    With `foreground_threshold` (on the min-max-scaled first component), patches below it are
    background (black) and the 3 components are refitted on the foreground only, as in the DINOv2 figures.
    """
    b, h, w, d = grids.shape
    flat = grids.reshape(-1, d)
    keep = torch.ones(len(flat), dtype=torch.bool)
    if foreground_threshold is not None:
        first = _minmax(_pca(flat, 1))[:, 0]
        keep = first > foreground_threshold
        if keep.sum() < 3:
            keep = torch.ones(len(flat), dtype=torch.bool)
    rgb = torch.zeros(len(flat), 3)
    rgb[keep] = _minmax(_pca(flat[keep], 3))
    return rgb.reshape(b, h, w, 3)


def _save_figure(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _display(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else img[..., :3]


def save_patch_pca_png(
    path: str | Path,
    images: Sequence[np.ndarray],
    rgb_by_model: Mapping[str, torch.Tensor],
    title: str = "",
) -> Path:
    """Row 0: the input images; one row per model: its patch-feature PCA as RGB ([B, h, w, 3])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = 1 + len(rgb_by_model)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n + 0.8, 1.6 * rows + 0.4), squeeze=False)
    for j, img in enumerate(images):
        axes[0][j].imshow(_display(img), cmap="gray" if img.ndim == 2 else None)
    axes[0][0].set_ylabel("image")
    for i, (name, rgb) in enumerate(rgb_by_model.items(), start=1):
        for j in range(n):
            axes[i][j].imshow(rgb[j].numpy(), interpolation="nearest")
        axes[i][0].set_ylabel(name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "patch features: first 3 PCA components as RGB")
    return _save_figure(fig, path)


def save_cls_map_png(
    path: str | Path,
    features_by_model: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """One panel per model: CLS features [N, D] projected on 2 PCA components, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(features_by_model)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    y = labels.numpy()
    cmap = plt.get_cmap("tab10" if int(y.max()) < 10 else "tab20")
    for ax, (name, feats) in zip(axes.flat, features_by_model.items()):
        xy = _pca(torch.nn.functional.normalize(feats.float(), dim=1), 2).numpy()
        ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap=cmap, s=4, vmin=0, vmax=max(9, int(y.max())))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [
        plt.Line2D(
            [], [], marker="o", ls="", color=cmap(c / max(9, int(y.max()))), label=(classes[c] if classes else str(c))
        )
        for c in np.unique(y)
    ][:20]
    fig.legend(handles=handles, loc="center right", fontsize=7, title="class")
    fig.suptitle(title or "CLS features, first 2 PCA components (L2-normalised)", y=1.03)
    fig.subplots_adjust(right=0.88)
    return _save_figure(fig, path)
