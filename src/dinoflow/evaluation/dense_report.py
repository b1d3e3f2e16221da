"""The dense part of the evaluation report: eval.json's `_dense` section and its Markdown.

    "_dense": {model: {dataset: {"task": "segmentation", "miou": …, "pixel_acc": …, "lr": …}
                                | {"task": "depth", "rmse": …, "abs_rel": …, "delta1": …, "lr": …}}}

mIoU, pixel accuracy and δ₁ are fractions in [0, 1]; RMSE is in metres; abs-rel is a ratio.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

DENSE_KEY = "_dense"
METRICS = {"segmentation": ("miou", "pixel_acc"), "depth": ("rmse", "abs_rel", "delta1")}
FRACTIONS = ("miou", "pixel_acc", "delta1")


def dense_entry(task: str, metrics: Mapping[str, float], lr: float) -> dict[str, Any]:
    return {"task": task, **{k: float(metrics[k]) for k in METRICS[task]}, "lr": float(lr)}


def check_dense_section(section: Any) -> None:
    """Raise ValueError unless `section` has the `_dense` shape with finite numbers in range."""
    if not isinstance(section, Mapping):
        raise ValueError(f"eval report {DENSE_KEY}: must map models to datasets to entries")
    for model, per_ds in section.items():
        if not isinstance(per_ds, Mapping):
            raise ValueError(f"eval report {DENSE_KEY}.{model}: must map datasets to entries")
        for ds, e in per_ds.items():
            where = f"eval report {DENSE_KEY}.{model}.{ds}"
            task = e.get("task") if isinstance(e, Mapping) else None
            if task not in METRICS or set(e) != {"task", "lr", *METRICS[task]}:
                raise ValueError(f"{where}: needs task (segmentation|depth), lr and its metrics; got {e!r}")
            for k in (*METRICS[task], "lr"):
                v = e[k]
                if not isinstance(v, float) or not math.isfinite(v) or v < 0:
                    raise ValueError(f"{where}.{k}: must be a finite non-negative number; got {v!r}")
                if k in FRACTIONS and v > 1.0:
                    raise ValueError(f"{where}.{k}: must be a fraction in [0, 1]; got {v!r}")


def render_dense_markdown(section: Mapping[str, Mapping[str, Mapping[str, Any]]], meta: Mapping[str, Any]) -> str:
    """One table per dense dataset, the headline metric first."""
    lines = [
        "# Dense evaluation (frozen patch tokens, linear probes)",
        "",
        "Segmentation: mIoU and pixel accuracy (fractions); depth: RMSE (metres, lower is better), "
        "abs-rel, δ<1.25. The probe's learning rate was chosen on a validation split of train.",
        "",
    ]
    datasets = list(dict.fromkeys(ds for per in section.values() for ds in per))
    for ds in datasets:
        models = [m for m in section if ds in section[m]]
        task = section[models[0]][ds]["task"]
        info = (meta.get("datasets") or {}).get(ds, {})
        sizes = f" ({info['n_train']} train / {info['n_test']} test)" if "n_train" in info else ""
        keys = METRICS[task]
        lines += [
            f"## {ds}: {task}{sizes}",
            "",
            "| model | " + " | ".join(keys) + " | lr |",
            "|" + "---|" * (len(keys) + 2),
        ]
        for m in models:
            e = section[m][ds]
            lines.append(f"| {m} | " + " | ".join(f"{e[k]:.3f}" for k in keys) + f" | {e['lr']:g} |")
        lines.append("")
    return "\n".join(lines)
