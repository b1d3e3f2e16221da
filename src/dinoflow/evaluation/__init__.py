"""Frozen-feature evaluation: k-NN (official DINOv2 protocol), linear probe, logistic regression,
baselines (raw pixels, random init), reports. The stage itself is `dinoflow.evaluation.run:evaluate`.

Accuracies are fractions in [0, 1] everywhere.
"""

from dinoflow.evaluation.features import FeatureSet, extract_features, patch_tokens, pixel_features
from dinoflow.evaluation.knn import iter_knn_scores, knn_accuracy, knn_classify
from dinoflow.evaluation.linear import LinearHParams, LinearResult, linear_probe, select_linear, stratified_split
from dinoflow.evaluation.logreg import LogregResult, logreg_probe, select_logreg
from dinoflow.evaluation.transform import eval_transform

__all__ = [
    "FeatureSet",
    "LinearHParams",
    "LinearResult",
    "LogregResult",
    "eval_transform",
    "extract_features",
    "iter_knn_scores",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "logreg_probe",
    "patch_tokens",
    "pixel_features",
    "select_linear",
    "select_logreg",
    "stratified_split",
]
