"""Frozen-feature evaluation: k-NN (official DINOv2 protocol), linear probe, logistic regression,
baselines (raw pixels, random init), reports. The stage itself is `dinoflow.evaluation.run:evaluate`.

Accuracies are fractions in [0, 1] everywhere.

Names are imported on first use: the registered embedding model imports
`dinoflow.evaluation.transform` alone and must not pull in scikit-learn through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FeatureSet": "features",
    "extract_features": "features",
    "patch_tokens": "features",
    "pixel_features": "features",
    "iter_knn_scores": "knn",
    "knn_accuracy": "knn",
    "knn_classify": "knn",
    "LinearHParams": "linear",
    "LinearResult": "linear",
    "linear_probe": "linear",
    "select_linear": "linear",
    "stratified_split": "linear",
    "LogregResult": "logreg",
    "logreg_probe": "logreg",
    "select_logreg": "logreg",
    "eval_transform": "transform",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
