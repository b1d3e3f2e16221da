"""The registry gate: floors on the candidate's own evaluation, then a challenge against the champion.

A candidate takes the alias (`champion`) only when both hold, on `register.dataset` of eval.json:

Floors (meaningful on any data: relative to this run's own baselines; each `null` turns it off)
    teacher k-NN − random-init k-NN   >= min_teacher_gain   (pretraining learned something)
    student k-NN / teacher k-NN       >= min_retention      (distillation kept it)
    student k-NN                      >= min_knn_top1       (optional absolute floor; off by default)
Challenge
    no champion yet, or
    student k-NN >= champion k-NN − champion_tolerance, where the champion's k-NN was measured
    on the same evaluation set (same images, labels and k-NN protocol: the fingerprint evaluate
    records). A champion measured on another set cannot be compared: the alias stays.

Every candidate is registered either way; the verdict (numbers, reasons, the champion compared
with) becomes its version tags. This module is pure: the champion comes in as a `Champion`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dinoflow.config import RegisterConfig
from dinoflow.errors import DinoflowError
from dinoflow.registry.dense_gate import dense_floor_reasons

# the gate's numbers, in the order floor_reasons returns them
GATE_NUMBERS = ("knn_top1", "teacher_knn_top1", "random_init_knn_top1", "retention", "teacher_gain")


@dataclass
class Champion:
    """The current alias holder as its version tags recorded it."""

    version: str
    knn_top1: float | None
    dataset: str | None
    eval_set: str | None
    sha256: str | None = None


def score(value: Any, where: str) -> float | None:
    """`value` as a finite float, None for None; DinoflowError naming `where` for anything else.

    Every comparison with NaN is false, so a NaN score would pass each floor and every challenge:
    a score is checked here, once, before any comparison sees it.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DinoflowError(
            f"{where} is {value!r} ({type(value).__name__}), not a number: rerun `dinoflow evaluate` "
            "(eval.json holds accuracies as fractions in [0, 1])"
        )
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise DinoflowError(
            f"{where} is {value}, not an accuracy (a finite fraction in [0, 1]): the gate cannot judge it; "
            "rerun `dinoflow evaluate`"
        )
    return float(value)


def knn_top1(models: dict[str, Any], model: str, dataset: str) -> float | None:
    """models[model][dataset]["knn_top1"] as a finite float, or None when absent.

    DinoflowError when the model's or the dataset's record is not a mapping, or the score is not a
    finite number.
    """
    per_model = models.get(model)
    if per_model is None:
        return None
    if not isinstance(per_model, dict):
        raise DinoflowError(
            f"evaluation report: {model} is {type(per_model).__name__}, not {{dataset: {{metric: value}}}}"
        )
    entry = per_model.get(dataset)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise DinoflowError(f"evaluation report: {model}/{dataset} is {type(entry).__name__}, not {{metric: value}}")
    return score(entry.get("knn_top1"), f"evaluation report {model}/{dataset} knn_top1")


def floor_reasons(models: dict[str, Any], rc: RegisterConfig) -> tuple[dict[str, Any], list[str]]:
    """({GATE_NUMBERS: value or None}, reasons the floors fail). DinoflowError when the student has no
    score on the dataset (so the student's `knn_top1` is always a number)."""
    ds = rc.dataset
    student = knn_top1(models, rc.student_key, ds)
    if student is None:
        have = {m: sorted(v) for m, v in models.items() if isinstance(v, dict)}
        raise DinoflowError(
            f"evaluation report has no knn_top1 for model {rc.student_key!r} on dataset {ds!r} "
            f"(it has: {have}); set register.dataset / register.student_key, or rerun evaluate"
        )
    teacher = knn_top1(models, rc.teacher_key, ds)
    baseline = knn_top1(models, rc.baseline_key, ds)
    retention = student / teacher if teacher else None  # a teacher at 0 learned nothing: no ratio
    gain = teacher - baseline if (teacher is not None and baseline is not None) else None
    reasons = []
    if rc.min_teacher_gain is not None:
        if gain is None:
            missing = rc.teacher_key if teacher is None else rc.baseline_key
            reasons.append(
                f"no {missing!r} knn_top1 on {ds}: the teacher-gain floor cannot be checked "
                f"(evaluate the teacher with the random_init baseline, or set register.min_teacher_gain=null)"
            )
        elif gain < rc.min_teacher_gain:
            reasons.append(
                f"teacher gain {gain:.4f} (teacher {teacher:.4f} − {rc.baseline_key} {baseline:.4f}) "
                f"< min_teacher_gain {rc.min_teacher_gain:.4f} on {ds}"
            )
    if rc.min_retention is not None:
        if retention is None:
            what = "no" if teacher is None else "a zero"
            reasons.append(f"{what} teacher ({rc.teacher_key!r}) knn_top1 on {ds}: retention cannot be checked")
        elif retention < rc.min_retention:
            reasons.append(
                f"retention {retention:.4f} (student {student:.4f} / teacher {teacher:.4f}) "
                f"< min_retention {rc.min_retention:.4f} on {ds}"
            )
    if rc.min_knn_top1 is not None and student < rc.min_knn_top1:
        reasons.append(f"knn_top1 {student:.4f} < min_knn_top1 {rc.min_knn_top1:.4f} on {ds}")
    return dict(zip(GATE_NUMBERS, (student, teacher, baseline, retention, gain))), reasons


def challenge_reasons(
    student: float, dataset: str, eval_set: str | None, champion: Champion | None, tolerance: float
) -> list[str]:
    """Why the candidate may not replace `champion` (empty: it may)."""
    if champion is None:
        return []
    who = f"champion version {champion.version}"
    if eval_set is None:
        return [
            f"the evaluation report records no fingerprint for {dataset}: cannot compare with the {who} "
            "(rerun `dinoflow evaluate`)"
        ]
    if champion.knn_top1 is not None and not math.isfinite(champion.knn_top1):
        return [
            f"the {who} holds the alias with knn_top1 {champion.knn_top1} (its tag gate.knn_top1 is not a finite "
            "number): no score compares with it, the alias stays (move the alias by hand to a version with a "
            "finite score — README: the gate)"
        ]
    if champion.eval_set != eval_set or champion.dataset != dataset or champion.knn_top1 is None:
        theirs = f"{champion.dataset} {str(champion.eval_set)[:12]}" if champion.eval_set else "an unrecorded set"
        return [
            f"the {who} was evaluated on another evaluation set ({theirs} vs {dataset} {eval_set[:12]}): "
            "not comparable, the alias stays (evaluate both on one set, or move the alias by hand — README: the gate)"
        ]
    if student < champion.knn_top1 - tolerance:
        return [
            f"knn_top1 {student:.4f} < {who}'s {champion.knn_top1:.4f} − champion_tolerance {tolerance:g} "
            f"on the same evaluation set"
        ]
    return []


@dataclass(frozen=True)
class Verdict:
    """The gate's judgement of one candidate: its numbers, why it failed (if it did), and what it was
    compared with. `passed` (it takes the alias) holds when there is no reason against it."""

    dataset: str
    eval_set: str | None
    numbers: dict[str, float | None]  # GATE_NUMBERS → value (None: not measured)
    floor_reasons: tuple[str, ...]
    challenge_reasons: tuple[str, ...]
    champion: Champion | None
    bounds: dict[str, Any]  # the settings it was judged with (min_*, dense_floors, champion_tolerance)

    @property
    def reasons(self) -> list[str]:
        """Why the candidate does not take the alias: the floors' reasons, then the challenge's."""
        return [*self.floor_reasons, *self.challenge_reasons]

    @property
    def passed(self) -> bool:
        return not self.floor_reasons and not self.challenge_reasons

    @property
    def floors_passed(self) -> bool:
        return not self.floor_reasons

    def metrics(self) -> dict[str, float]:
        """The measured numbers as run metrics: `gate.<number>`."""
        return {f"gate.{k}": float(v) for k, v in self.numbers.items() if v is not None}

    def tags(self) -> dict[str, str]:
        """The verdict as registered-version tags: `gate`, `gate.<number>`, the champion compared with."""

        def num(v: Any) -> str:
            return "n/a" if v is None else f"{float(v):.6f}"

        tags = {
            "gate": "passed" if self.passed else "failed",
            "gate.floors": "passed" if self.floors_passed else "failed",
            "gate.dataset": self.dataset,
            "gate.eval_set": self.eval_set or "unrecorded",
            **{f"gate.{k}": num(v) for k, v in self.numbers.items()},
            "gate.champion_version": self.champion.version if self.champion else "none",
            "gate.champion_knn_top1": num(self.champion.knn_top1 if self.champion else None),
        }
        if self.reasons:
            tags["gate.reasons"] = "; ".join(self.reasons)[:5000]
        return tags

    def record(self) -> dict[str, Any]:
        """The verdict as JSON (`reports/registry.json`'s `gate`)."""
        return {
            "passed": self.passed,
            "floors_passed": self.floors_passed,
            "dataset": self.dataset,
            "eval_set": self.eval_set,
            **self.numbers,
            **self.bounds,
            "champion": None if self.champion is None else asdict(self.champion),
            "reasons": self.reasons,
        }


def gate_verdict(
    models: dict[str, Any],
    rc: RegisterConfig,
    eval_set: str | None,
    champion: Champion | None,
    dense: dict[str, Any] | None = None,
) -> Verdict:
    """The gate's verdict on the student of `models` (eval.json's scores) against `champion`.

    `dense` is eval.json's `_dense` section, checked against `register.dense_floors`."""
    numbers, floors = floor_reasons(models, rc)
    floors += dense_floor_reasons(dense or {}, rc.student_key, rc.dense_floors)
    challenge = challenge_reasons(numbers["knn_top1"], rc.dataset, eval_set, champion, rc.champion_tolerance)
    return Verdict(
        dataset=rc.dataset,
        eval_set=eval_set,
        numbers=numbers,
        floor_reasons=tuple(floors),
        challenge_reasons=tuple(challenge),
        champion=champion,
        bounds={
            "min_teacher_gain": rc.min_teacher_gain,
            "min_retention": rc.min_retention,
            "min_knn_top1": rc.min_knn_top1,
            "dense_floors": dict(rc.dense_floors),
            "champion_tolerance": rc.champion_tolerance,
        },
    )
