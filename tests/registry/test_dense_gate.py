"""The optional dense bounds of the gate, the dense version tags and the model card's dense table (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dinoflow.config import RegisterConfig
from dinoflow.registry.dense_gate import dense_floor_reasons, dense_table, dense_tags
from dinoflow.registry.gate import gate_verdict

DENSE = {
    "student": {
        "mosaics": {"task": "segmentation", "miou": 0.40, "pixel_acc": 0.90, "lr": 0.01},
        "depth": {"task": "depth", "rmse": 0.60, "abs_rel": 0.15, "delta1": 0.80, "lr": 0.01},
    },
    "random_init": {"mosaics": {"task": "segmentation", "miou": 0.12, "pixel_acc": 0.94, "lr": 0.01}},
}
MODELS = {m: {"mnist": {"knn_top1": v}} for m, v in (("student", 0.76), ("teacher", 0.77), ("random_init", 0.5))}


def test_dense_floors_are_off_by_default_and_hold_or_fail_with_their_reason():
    assert RegisterConfig().dense_floors == {}
    assert gate_verdict(MODELS, RegisterConfig(), "a" * 64, None, DENSE).passed
    ok = {"mosaics.miou": 0.35, "depth.rmse": 0.7, "depth.delta1": 0.8}
    assert dense_floor_reasons(DENSE, "student", ok) == []
    bad = {"mosaics.miou": 0.5, "depth.rmse": 0.5, "depth.abs_rel": 0.1}
    reasons = dense_floor_reasons(DENSE, "student", bad)
    assert reasons == [
        "mosaics miou 0.4000 < dense floor 0.5",
        "depth rmse 0.6000 > dense floor 0.5 (at most)",
        "depth abs_rel 0.1500 > dense floor 0.1 (at most)",
    ]
    v = gate_verdict(MODELS, RegisterConfig(dense_floors=bad), "a" * 64, None, DENSE)
    assert not v.passed and not v.floors_passed and v.bounds["dense_floors"] == bad


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, "0.9", True])
def test_a_missing_or_non_finite_dense_number_fails_its_floor(value):
    dense = {"student": {"mosaics": {"task": "segmentation", "miou": value}}}
    (reason,) = dense_floor_reasons(dense, "student", {"mosaics.miou": 0.1})
    assert "no finite miou for 'student' on 'mosaics'" in reason
    (reason,) = dense_floor_reasons({}, "student", {"other.rmse": 1.0})
    assert "on 'other'" in reason


def test_dense_floor_keys_name_a_dataset_and_a_known_metric():
    with pytest.raises(ValidationError, match="'<dataset>.<metric>'"):
        RegisterConfig(dense_floors={"miou": 0.3})
    with pytest.raises(ValidationError, match="'<dataset>.<metric>'"):
        RegisterConfig(dense_floors={"mosaics.accuracy": 0.3})


def test_dense_tags_and_card_table():
    assert dense_tags(DENSE, "student") == {
        "dense.depth.abs_rel": "0.150000",
        "dense.depth.delta1": "0.800000",
        "dense.depth.rmse": "0.600000",
        "dense.mosaics.miou": "0.400000",
        "dense.mosaics.pixel_acc": "0.900000",
    }
    rows = dense_table(DENSE, ("student", "teacher", "random_init"))
    assert rows[0] == "| model | mosaics mIoU % | depth RMSE m |"
    assert rows[2:] == ["| student | 40.0 | 0.600 |", "| random_init | 12.0 | – |"]
    assert dense_table({}, ("student",)) == []
