"""The evaluation records and the eval.json sections rendered from them."""

from __future__ import annotations

from pathlib import Path

from dinoflow.evaluation.candidates import Candidate
from dinoflow.evaluation.report import ENTRY_KEYS, eval_entry
from dinoflow.evaluation.results import (
    CandidateResult,
    EvalSet,
    dataset_sizes,
    descriptions,
    provenance,
    results_table,
)


def _result(candidate: str, dataset: str, top1: float, logreg: float | None = 0.5) -> CandidateResult:
    knn = {k: {"top1": top1, "top5": 1.0, "k_used": k} for k in (20, 10)}
    entry = eval_entry(knn, 0.25, {"n_last_blocks": 1, "avgpool": False, "lr": 0.1}, logreg)
    return CandidateResult.from_entry(candidate, dataset, entry, seconds=1.5)


def test_the_table_is_candidate_major_in_the_order_first_met():
    # evaluation runs set by set; the table reads model by model
    found = [_result(m, ds, 0.1 * i) for i, (ds, m) in enumerate(((d, m) for d in ("b", "a") for m in ("y", "x")))]
    table = results_table(found)
    assert list(table) == ["y", "x"] and all(list(per) == ["b", "a"] for per in table.values())
    assert table["x"]["a"]["knn_top1"] == 0.30000000000000004
    assert all(list(e) == list(ENTRY_KEYS) for per in table.values() for e in per.values())
    assert list(table["y"]["b"]["knn"]) == ["10", "20"]


def test_a_record_holds_the_eval_json_cell_and_its_scalar_metrics():
    r = _result("teacher", "mnist", 0.75, logreg=None)
    assert r.knn_top1 == 0.75 and r.linear_best == {"n_last_blocks": 1, "avgpool": False, "lr": 0.1}
    assert r.seconds == 1.5 and "seconds" not in r.entry()  # timings stay out of eval.json
    assert r.metrics() == {
        "mnist.teacher.knn_top1": 0.75,
        "mnist.teacher.knn_top5": 1.0,
        "mnist.teacher.linear_top1": 0.25,
    }


def test_provenance_names_the_trained_files_and_the_sets():
    cands = [
        Candidate("teacher", "trained", "a vit", path=Path("/m/t.pth"), sha256="a" * 64),
        Candidate("random_init", "baseline", "the same vit, untrained"),
        Candidate("raw_pixels", "baseline", "pixels"),
    ]
    sets = [EvalSet("mnist", 150, 50, 10, "f" * 64)]
    dense = {"depth": {"task": "depth", "n_train": 1, "n_test": 1, "fingerprint": "d" * 64}}
    assert provenance(cands, sets, dense) == {
        "models": {"teacher": {"path": "/m/t.pth", "sha256": "a" * 64}},
        "datasets": {"mnist": {"fingerprint": "f" * 64, "n_train": 150, "n_test": 50, "n_classes": 10}},
        "dense_datasets": dense,
    }
    assert dataset_sizes(sets) == {"mnist": {"n_train": 150, "n_test": 50, "n_classes": 10}}
    assert list(descriptions(cands).items()) == [
        ("teacher", "a vit"),
        ("random_init", "the same vit, untrained"),
        ("raw_pixels", "pixels"),
    ]
