"""Dense numbers at registration: optional gate bounds, version tags and the model card's table.

`register.dense_floors` maps "<dataset>.<metric>" of eval.json's `_dense` section to a bound on the
student: at least the value for the fractions (miou, pixel_acc, delta1), at most for the errors
(rmse in metres, abs_rel). Empty (the default) turns the dense gate off: dense numbers are still
tagged and shown. A bound on a number the report does not have, or on a non-finite one, fails.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dinoflow.evaluation.dense_report import METRICS

LOWER_IS_BETTER = ("rmse", "abs_rel")
KNOWN_METRICS = tuple(dict.fromkeys(m for ms in METRICS.values() for m in ms))


def dense_floor_reasons(dense: Mapping[str, Any], student_key: str, floors: Mapping[str, float]) -> list[str]:
    """Why the student's dense numbers fail `floors` (empty: they hold)."""
    mine = dense.get(student_key) or {}
    reasons = []
    for key, bound in floors.items():
        ds, _, metric = key.rpartition(".")
        value = (mine.get(ds) or {}).get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            reasons.append(
                f"dense floor {key}: the report has no finite {metric} for {student_key!r} on {ds!r} (got {value!r}); "
                "evaluate that dense dataset or remove the floor"
            )
        elif metric in LOWER_IS_BETTER and value > bound:
            reasons.append(f"{ds} {metric} {value:.4f} > dense floor {bound:g} (at most)")
        elif metric not in LOWER_IS_BETTER and value < bound:
            reasons.append(f"{ds} {metric} {value:.4f} < dense floor {bound:g}")
    return reasons


def dense_tags(dense: Mapping[str, Any], student_key: str) -> dict[str, str]:
    """The student's dense numbers as version tags: `dense.<dataset>.<metric>`."""
    return {
        f"dense.{ds}.{k}": f"{float(v):.6f}"
        for ds, entry in sorted((dense.get(student_key) or {}).items())
        for k, v in entry.items()
        if k in KNOWN_METRICS
    }


def dense_table(dense: Mapping[str, Any], order: tuple[str, ...]) -> list[str]:
    """Markdown rows: one per model, the headline metric of each dense dataset (mIoU %, RMSE m)."""
    datasets = list(dict.fromkeys(d for per in dense.values() for d in per))
    if not datasets:
        return []

    def cell(e: Mapping[str, Any] | None) -> str:
        if not e:
            return "–"
        return f"{100 * e['miou']:.1f}" if e.get("task") == "segmentation" else f"{e['rmse']:.3f}"

    head = ["model"] + [
        f"{d} {'mIoU %' if next(iter(dense.values())).get(d, {}).get('task') == 'segmentation' else 'RMSE m'}"
        for d in datasets
    ]
    names = [m for m in order if m in dense] + [m for m in dense if m not in order]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows += ["| " + " | ".join([n, *[cell(dense[n].get(d)) for d in datasets]]) + " |" for n in names]
    return rows
