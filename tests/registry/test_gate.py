"""The gate: floors on the candidate's own evaluation, then the challenge against the champion (pure)."""

from __future__ import annotations

import pytest

from dinoflow.config import RegisterConfig
from dinoflow.errors import DinoflowError
from dinoflow.registry.gate import Champion, challenge_reasons, gate_verdict

SET = "a" * 64


def models(
    student: float | None = 0.76, teacher: float | None = 0.77, random_init: float | None = 0.54, dataset: str = "mnist"
) -> dict:
    out: dict = {}
    for name, v in (("student", student), ("teacher", teacher), ("random_init", random_init)):
        if v is not None:
            out[name] = {dataset: {"knn_top1": v}, "digits": {"knn_top1": 0.1}}
    return out


def test_default_floors_pass_on_the_demo_numbers_with_no_champion():
    # the demo's measured numbers (README): no absolute floor by default, so they pass
    v = gate_verdict(models(0.764, 0.774, 0.537), RegisterConfig(), SET, None)
    assert v.passed and v.floors_passed and v.reasons == [] and v.champion is None
    assert v.numbers["retention"] == pytest.approx(0.764 / 0.774)
    assert v.numbers["teacher_gain"] == pytest.approx(0.774 - 0.537)
    assert RegisterConfig().min_knn_top1 is None


@pytest.mark.parametrize(
    ("kw", "numbers", "expect"),
    [
        ({}, (0.76, 0.57, 0.54), ["teacher gain 0.0300"]),
        ({}, (0.60, 0.77, 0.54), ["retention 0.7792"]),
        ({"min_knn_top1": 0.9}, (0.76, 0.77, 0.54), ["knn_top1 0.7600 < min_knn_top1 0.9000"]),
        ({}, (0.50, 0.55, 0.54), ["teacher gain 0.0100", "retention 0.9091"]),
        ({}, (0.76, 0.77, None), ["no 'random_init' knn_top1 on mnist: the teacher-gain floor cannot be checked"]),
        (
            {"min_teacher_gain": None},
            (0.76, None, None),
            ["no teacher ('teacher') knn_top1 on mnist: retention cannot be checked"],
        ),
    ],
)
def test_each_floor_fails_with_its_reason(kw, numbers, expect):
    v = gate_verdict(models(*numbers), RegisterConfig(**kw), SET, None)
    assert not v.passed and not v.floors_passed
    assert len(v.reasons) == len(expect)
    for reason, text in zip(v.reasons, expect):
        assert text in reason


def test_floors_can_be_turned_off():
    rc = RegisterConfig(min_teacher_gain=None, min_retention=None)
    assert gate_verdict(models(0.1, None, None), rc, SET, None).passed


def test_missing_student_score_is_named():
    with pytest.raises(DinoflowError, match=r"no knn_top1 for model 'student' on dataset 'cifar'"):
        gate_verdict(models(), RegisterConfig(dataset="cifar"), SET, None)


def test_challenger_must_match_the_champion_on_the_same_set():
    rc = RegisterConfig(champion_tolerance=0.005)
    champ = Champion("3", 0.80, "mnist", SET)
    worse = gate_verdict(models(0.79, 0.80, 0.5), rc, SET, champ)
    assert worse.floors_passed and not worse.passed
    assert worse.reasons == [
        "knn_top1 0.7900 < champion version 3's 0.8000 − champion_tolerance 0.005 on the same evaluation set"
    ]
    assert worse.record()["champion"] == {
        "version": "3",
        "knn_top1": 0.80,
        "dataset": "mnist",
        "eval_set": SET,
        "sha256": None,
    }
    within = gate_verdict(models(0.796, 0.80, 0.5), rc, SET, champ)
    assert within.passed, "a candidate within the tolerance takes the alias"
    assert gate_verdict(models(0.85, 0.86, 0.5), rc, SET, champ).passed


def test_a_champion_from_another_evaluation_set_is_not_comparable():
    champ = Champion("2", 0.50, "mnist", "b" * 64)
    v = gate_verdict(models(0.9, 0.9, 0.5), RegisterConfig(), SET, champ)
    assert not v.passed and v.floors_passed
    assert "was evaluated on another evaluation set" in v.reasons[0] and "not comparable" in v.reasons[0]
    assert challenge_reasons(0.9, "digits", SET, Champion("2", 0.5, "mnist", SET), 0.0), "another dataset name"
    assert challenge_reasons(0.9, "mnist", SET, Champion("2", None, "mnist", SET), 0.0), "champion without a score"
    assert "records no fingerprint" in challenge_reasons(0.9, "mnist", None, champ, 0.0)[0]


def test_floors_and_challenge_reasons_are_both_reported():
    v = gate_verdict(models(0.40, 0.80, 0.5), RegisterConfig(), SET, Champion("1", 0.7, "mnist", SET))
    assert len(v.reasons) == 2 and "retention" in v.reasons[0] and "champion version 1" in v.reasons[1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -0.1, 1.5, "0.9", True, [0.9], {"v": 1}])
@pytest.mark.parametrize("who", ["student", "teacher", "random_init"])
def test_a_score_that_is_not_a_finite_fraction_is_refused_by_name(who, bad):
    numbers = {"student": 0.76, "teacher": 0.77, "random_init": 0.54, who: bad}
    with pytest.raises(DinoflowError, match=rf"{who}/mnist knn_top1 is .*(not a number|not an accuracy)"):
        gate_verdict(models(**numbers), RegisterConfig(), SET, None)


@pytest.mark.parametrize("entry", ["0.9", [0.9], 3])
def test_a_model_or_dataset_record_of_the_wrong_type_is_named(entry):
    with pytest.raises(DinoflowError, match=r"evaluation report: student(/mnist)? is (str|list|int), not"):
        gate_verdict({"student": entry}, RegisterConfig(), SET, None)
    with pytest.raises(DinoflowError, match=r"evaluation report: student/mnist is (str|list|int), not"):
        gate_verdict({"student": {"mnist": entry}}, RegisterConfig(), SET, None)


@pytest.mark.parametrize("held", [float("nan"), float("inf"), -float("inf")])
def test_a_champion_without_a_finite_score_keeps_the_alias_and_says_why(held):
    # any comparison with NaN is false: without the check every candidate would take the alias
    champ = Champion("4", held, "mnist", SET)
    for student in (0.0, 0.5, 1.0):
        v = gate_verdict(models(student, 0.77 if student else 0.5, 0.3), RegisterConfig(min_retention=None), SET, champ)
        assert not v.passed, v
        assert any("champion version 4 holds the alias with knn_top1" in r and "not a finite" in r for r in v.reasons)


def test_a_teacher_at_zero_is_named_not_treated_as_missing():
    v = gate_verdict(models(0.5, 0.0, 0.0), RegisterConfig(min_teacher_gain=None), SET, None)
    assert v.reasons == ["a zero teacher ('teacher') knn_top1 on mnist: retention cannot be checked"]


def test_the_verdict_as_run_metrics_version_tags_and_report_record():
    champ = Champion("3", 0.80, "mnist", SET)
    v = gate_verdict(
        models(0.79, 0.80, None), RegisterConfig(champion_tolerance=0.005, min_teacher_gain=None), SET, champ
    )
    assert v.metrics() == {
        "gate.knn_top1": 0.79,
        "gate.teacher_knn_top1": 0.80,
        "gate.retention": pytest.approx(0.79 / 0.80),
    }, "a number not measured is no metric"
    tags = v.tags()
    assert tags["gate"] == "failed" and tags["gate.floors"] == "passed" and tags["gate.dataset"] == "mnist"
    assert tags["gate.knn_top1"] == "0.790000" and tags["gate.random_init_knn_top1"] == "n/a"
    assert tags["gate.champion_version"] == "3" and tags["gate.champion_knn_top1"] == "0.800000"
    assert tags["gate.reasons"] == v.reasons[0] and "champion version 3's 0.8000" in tags["gate.reasons"]
    record = v.record()
    assert list(record) == [
        "passed",
        "floors_passed",
        "dataset",
        "eval_set",
        "knn_top1",
        "teacher_knn_top1",
        "random_init_knn_top1",
        "retention",
        "teacher_gain",
        "min_teacher_gain",
        "min_retention",
        "min_knn_top1",
        "dense_floors",
        "champion_tolerance",
        "champion",
        "reasons",
    ]
    assert record["passed"] is False and record["champion"]["version"] == "3" and record["reasons"] == v.reasons
    unjudged = gate_verdict(models(), RegisterConfig(), None, None)
    assert unjudged.tags()["gate.eval_set"] == "unrecorded" and unjudged.tags()["gate.champion_version"] == "none"
    assert "gate.reasons" not in unjudged.tags()
