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
from dinoflow.evaluation.dense_report import DENSE_KEY
from dinoflow.evaluation.report import PROVENANCE_KEY


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
    prov = report.get(PROVENANCE_KEY) or {}
    models = {k: v for k, v in report.items() if not k.startswith("_") and isinstance(v, dict)}
    dense = report.get(DENSE_KEY) if isinstance(report.get(DENSE_KEY), dict) else {}
    return EvalEvidence(p, models, dict(prov.get("models") or {}), dict(prov.get("datasets") or {}), dense)


def check_evaluated(evidence: EvalEvidence, key: str, model_file: str | Path) -> str:
    """sha256 of `model_file`, after checking that the report evaluated exactly these bytes as `key`.

    Raises EvaluationMismatch when the report has no record for `key` or recorded another file.
    """
    model_file = Path(model_file)
    digest = file_sha256(model_file)
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
