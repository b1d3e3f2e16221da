"""The `evaluate` stage's results as records, and the eval.json sections rendered from them.

One `CandidateResult` per (candidate, classification set) and one `EvalSet` per set; the
{model: {dataset: entry}} table and the `_provenance` section are views of these lists, so a
model's numbers, its file digest and the sets' fingerprints cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from dinoflow.evaluation.candidates import Candidate
from dinoflow.evaluation.report import ENTRY_KEYS


@dataclass(frozen=True)
class EvalSet:
    """A classification set as evaluated: its sizes and the sha256 of its splits + k-NN protocol."""

    name: str
    n_train: int
    n_test: int
    n_classes: int
    fingerprint: str

    def sizes(self) -> dict[str, int]:
        return {"n_train": self.n_train, "n_test": self.n_test, "n_classes": self.n_classes}


@dataclass(frozen=True)
class CandidateResult:
    """One candidate on one set: k-NN top-1 (report k), per-k top-1 (keys: k as strings) and top-5,
    the linear probe's top-1 and chosen settings, the logistic regression's top-1 (fractions in [0, 1];
    None where a probe could not run), and the seconds spent (features + probes)."""

    candidate: str
    dataset: str
    knn_top1: float
    knn: dict[str, float]
    knn_top5: float
    linear_top1: float | None
    linear_best: dict[str, Any] | None
    logreg_top1: float | None
    seconds: float

    @classmethod
    def from_entry(cls, candidate: str, dataset: str, entry: Mapping[str, Any], seconds: float) -> CandidateResult:
        """From an `eval_entry` cell (the eval.json shape)."""
        return cls(candidate, dataset, **{k: entry[k] for k in ENTRY_KEYS}, seconds=seconds)

    def entry(self) -> dict[str, Any]:
        """The eval.json cell, keys in `ENTRY_KEYS` order."""
        return {k: getattr(self, k) for k in ENTRY_KEYS}

    def metrics(self) -> dict[str, float]:
        """The scalar accuracies under `<dataset>.<candidate>.<key>` (what the tracking run logs)."""
        return {f"{self.dataset}.{self.candidate}.{k}": v for k, v in self.entry().items() if isinstance(v, float)}


def results_table(results: Iterable[CandidateResult]) -> dict[str, dict[str, dict[str, Any]]]:
    """{candidate: {dataset: entry}}, candidates and datasets in the order first met."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        table.setdefault(r.candidate, {})[r.dataset] = r.entry()
    return table


def dataset_sizes(sets: Iterable[EvalSet]) -> dict[str, dict[str, int]]:
    """{dataset: {n_train, n_test, n_classes}}."""
    return {s.name: s.sizes() for s in sets}


def provenance(
    candidates: Sequence[Candidate], sets: Sequence[EvalSet], dense_datasets: Mapping[str, Any]
) -> dict[str, Any]:
    """eval.json's `_provenance`: each trained candidate's file and sha256, each set's fingerprint
    and sizes, and the dense sets' records."""
    return {
        "models": {c.name: {"path": str(c.path), "sha256": c.sha256} for c in candidates if c.kind == "trained"},
        "datasets": {s.name: {"fingerprint": s.fingerprint, **s.sizes()} for s in sets},
        "dense_datasets": dict(dense_datasets),
    }


def descriptions(candidates: Sequence[Candidate]) -> dict[str, str]:
    """{candidate: what it is, in words} (eval.md's model list)."""
    return {c.name: c.description for c in candidates}
