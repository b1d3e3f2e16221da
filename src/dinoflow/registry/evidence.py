"""What `register` is given to judge a candidate: eval.json, and proof that it evaluated *this* file.

eval.json (written by `dinoflow evaluate`) records the sha256 of every model file it evaluated
(`_provenance.models.<name>.sha256`) and a fingerprint of every evaluation set. `register`
refuses a report that did not evaluate the file it is asked to register (`EvaluationMismatch`):
otherwise a half-trained student could take the champion alias with another file's numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.dense_report import DENSE_KEY, check_dense_section
from dinoflow.evaluation.report import PROVENANCE_KEY
from dinoflow.registry.gate import score

EVAL_METRICS = ("knn_top1", "knn_top5", "linear_top1", "logreg_top1")  # what register reads from an entry


class EvaluationMismatch(DinoflowError):
    """The evaluation report is not about the model file being registered."""


@dataclass
class EvalEvidence:
    """eval.json split into results ({model: {dataset: entry}}) and what was evaluated."""

    path: Path
    models: dict[str, Any]
    model_files: dict[str, dict[str, str]] = field(default_factory=dict)  # name → {path, sha256}
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → {fingerprint, n_train, …}
    dense: dict[str, Any] = field(default_factory=dict)  # the `_dense` section: {model: {dataset: entry}}

    def eval_set(self, dataset: str) -> str | None:
        """The fingerprint of `dataset` (its images, labels and k-NN protocol), or None when unrecorded."""
        return (self.datasets.get(dataset) or {}).get("fingerprint")


def read_eval_report(path: str | Path) -> EvalEvidence:
    """Read eval.json; DinoflowError naming the file when it is missing or not a report."""
    p = Path(path)
    if not p.is_file():
        raise DinoflowError(f"evaluation report {p} not found: run `dinoflow evaluate` first")
    try:
        report = json.loads(p.read_text())
    except ValueError as e:
        raise DinoflowError(f"evaluation report {p} is not valid JSON: {e}") from e
    if not isinstance(report, dict):
        raise DinoflowError(f"evaluation report {p} must be a JSON object {{model: {{dataset: {{metric: value}}}}}}")
    models = {k: v for k, v in report.items() if not k.startswith("_")}  # "_…" keys are sections
    for model, per_ds in models.items():
        _check_model(p, model, per_ds)
    prov = _mapping(p, PROVENANCE_KEY, report.get(PROVENANCE_KEY))
    files = _mapping(p, f"{PROVENANCE_KEY}.models", prov.get("models"))
    sets = _mapping(p, f"{PROVENANCE_KEY}.datasets", prov.get("datasets"))
    for kind, records in (("models", files), ("datasets", sets)):
        for key, record in records.items():
            _mapping(p, f"{PROVENANCE_KEY}.{kind}.{key}", record)
    dense = _mapping(p, DENSE_KEY, report.get(DENSE_KEY))
    try:
        check_dense_section(dense)
    except ValueError as e:
        raise DinoflowError(f"evaluation report {p}: {e}; rerun `dinoflow evaluate`") from None
    return EvalEvidence(p, models, dict(files), dict(sets), dense)


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, {} when absent; a named DinoflowError for any other type."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DinoflowError(
            f"evaluation report {path}: {where} is {type(value).__name__} ({str(value)[:80]}), not a JSON object; "
            "rerun `dinoflow evaluate`"
        )
    return value


def _check_model(path: Path, model: str, per_ds: Any) -> None:
    """Each entry {dataset: {metric: value}} of `model`, with every metric register reads a finite fraction."""
    for dataset, entry in _mapping(path, model, per_ds).items():
        entry = _mapping(path, f"{model}.{dataset}", entry)
        for metric in EVAL_METRICS:
            score(entry.get(metric), f"evaluation report {path}: {model}/{dataset} {metric}")


def check_evaluated(
    evidence: EvalEvidence, key: str, model_file: str | Path, shown_as: str | Path | None = None
) -> str:
    """sha256 of `model_file`, after checking that the report evaluated exactly these bytes as `key`.

    `shown_as`: the path named in messages when `model_file` is a private copy of it.
    Raises EvaluationMismatch when the report has no record for `key` or recorded another file.
    """
    digest = file_sha256(model_file)
    model_file = Path(shown_as or model_file)
    record = evidence.model_files.get(key)
    rerun = f"rerun `dinoflow evaluate` with evaluate.models.{key}={model_file}"
    if record is None:
        raise EvaluationMismatch(
            f"{evidence.path} does not record which file it evaluated as {key!r} (no {PROVENANCE_KEY}.models.{key}; "
            f"written by an older dinoflow or by hand): {rerun}"
        )
    if record.get("sha256") != digest:
        raise EvaluationMismatch(
            f"{evidence.path} did not evaluate {model_file}: its {key!r} was {record.get('path')} with sha256 "
            f"{str(record.get('sha256'))[:12]}…, this file's sha256 is {digest[:12]}…; {rerun}"
        )
    return digest
