"""`dinoflow register`: log the student as an MLflow model, register a new version, and move the
`champion` alias only when the quality gate passes.

Gate (thresholds in params.yaml `register:`), on `register.dataset` of `reports/eval.json`
(`{model: {dataset: {"knn_top1": ...}}}`):
    student k-NN top-1                 >= min_knn_top1
    student / teacher k-NN top-1       >= min_retention
A failed gate leaves the alias where it was; the new version stays a candidate, tagged
`gate=failed` with the reasons. Every version carries the gate's numbers as tags.
`reports/registry.json` records the model URI, version, alias holder and the verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dinoflow import tracking
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_json


def read_eval_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DinoflowError(f"evaluation report {p} not found: run `dinoflow evaluate` first")
    try:
        report = json.loads(p.read_text())
    except ValueError as e:
        raise DinoflowError(f"evaluation report {p} is not valid JSON: {e}") from e
    if not isinstance(report, dict):
        raise DinoflowError(f"evaluation report {p} must be a JSON object {{model: {{dataset: {{metric: value}}}}}}")
    if isinstance(report.get("models"), dict):  # tolerate a wrapped layout
        report = report["models"]
    return report


def knn_top1(report: dict[str, Any], model: str, dataset: str) -> float | None:
    """report[model][dataset]["knn_top1"], or None when absent."""
    value = ((report.get(model) or {}).get(dataset) or {}).get("knn_top1")
    return None if value is None else float(value)


def gate_verdict(report: dict[str, Any], rc: Any) -> dict[str, Any]:
    """The gate's verdict with its numbers; `passed` is False with `reasons` when it fails.

    Raises DinoflowError when the student has no k-NN score on the gate's dataset.
    """
    student = knn_top1(report, rc.student_key, rc.dataset)
    if student is None:
        have = {m: sorted(v) for m, v in report.items() if isinstance(v, dict)}
        raise DinoflowError(
            f"evaluation report has no knn_top1 for model {rc.student_key!r} on dataset {rc.dataset!r} "
            f"(it has: {have}); set register.dataset / register.student_key, or rerun evaluate"
        )
    teacher = knn_top1(report, rc.teacher_key, rc.dataset)
    retention = None if not teacher else student / teacher
    reasons = []
    if student < rc.min_knn_top1:
        reasons.append(f"knn_top1 {student:.4f} < min_knn_top1 {rc.min_knn_top1:.4f} on {rc.dataset}")
    if retention is None:
        reasons.append(f"no teacher ({rc.teacher_key!r}) knn_top1 on {rc.dataset}: retention cannot be checked")
    elif retention < rc.min_retention:
        reasons.append(f"retention {retention:.4f} (student {student:.4f} / teacher {teacher:.4f}) < min_retention {rc.min_retention:.4f}")
    return {
        "passed": not reasons,
        "dataset": rc.dataset,
        "knn_top1": student,
        "teacher_knn_top1": teacher,
        "retention": retention,
        "min_knn_top1": rc.min_knn_top1,
        "min_retention": rc.min_retention,
        "reasons": reasons,
    }


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST: no holder yet
        return None


def register(cfg: Any) -> dict[str, Any]:
    """Log + register the student; set the alias only when the gate passes. Returns registry.json's content."""
    rc = cfg.register
    gate = gate_verdict(read_eval_report(rc.eval_report), rc)
    student = Path(rc.model_path)
    student_pth = student / "backbone.pth" if student.is_dir() or not student.suffix else student
    if not student_pth.is_file():
        raise DinoflowError(f"student backbone {student_pth} not found: run `dinoflow distill` first")
    result: dict[str, Any] = {"model_name": rc.model_name, "alias": rc.alias, "gate": gate, "registered": False}
    with tracking.stage_run("register", cfg) as run:
        if run is None:
            result["note"] = "tracking disabled (tracking.enabled=false or not rank 0): nothing registered"
        else:
            import mlflow

            tracking.log_metrics({k: gate[k] for k in ("knn_top1", "teacher_knn_top1", "retention") if gate[k] is not None})
            tracking.set_tags({"gate": "passed" if gate["passed"] else "failed"})
            info = tracking.log_model(student_pth, "student", cfg, registered_model_name=rc.model_name)
            teacher_uri = None
            if rc.teacher_path and Path(rc.teacher_path).exists():
                teacher_uri = tracking.log_model(rc.teacher_path, "teacher", cfg).model_uri
            client = mlflow.MlflowClient()
            version = str(info.registered_model_version)
            with tracking.named_errors(f"tagging {rc.model_name} version {version}"):
                tags = {
                    "gate": "passed" if gate["passed"] else "failed",
                    "gate.dataset": gate["dataset"],
                    "gate.knn_top1": f"{gate['knn_top1']:.6f}",
                    "gate.retention": "n/a" if gate["retention"] is None else f"{gate['retention']:.6f}",
                }
                if not gate["passed"]:
                    tags["gate.reasons"] = "; ".join(gate["reasons"])[:5000]
                for k, v in tags.items():
                    client.set_model_version_tag(rc.model_name, version, k, v)
                if gate["passed"]:
                    client.set_registered_model_alias(rc.model_name, rc.alias, version)
                holder = _alias_version(client, rc.model_name, rc.alias)
            result.update(
                registered=True,
                version=version,
                model_uri=f"models:/{rc.model_name}/{version}",
                logged_model_uri=info.model_uri,
                teacher_model_uri=teacher_uri,
                alias_version=holder,
                alias_uri=f"models:/{rc.model_name}@{rc.alias}" if holder else None,
                run_id=run.info.run_id,
                tracking_uri=tracking.redact(tracking.tracking_uri(cfg)),
            )
        atomic_write_json(rc.report, result)
        tracking.log_artifact(rc.report, "reports")
    return result
