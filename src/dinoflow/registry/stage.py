"""`dinoflow register`: every candidate becomes a registered version; the alias moves only through the gate.

Order of work:
1. the student (backbone.pth and the configs beside it) is copied to a private folder, and
   eval.json must have evaluated exactly that copy (sha256; `EvaluationMismatch`): everything
   below reads the copy, so what is logged is what was hashed;
2. the floors of the gate on eval.json (`dinoflow.registry.gate`): a bad report stops here,
   before anything is written to MLflow;
3. the ONNX export, checked against PyTorch (`register.onnx`);
4. an MLflow LoggedModel whose source run is the run that trained the student (`lineage`), holding
   the pyfunc model, its weights and the ONNX file; the evaluation metrics linked to it and to
   their evaluation dataset;
5. under the model's gate lock (`dinoflow.registry.lock`: one register at a time per model): the
   challenge against the current champion, a new registered version with the verdict, numbers,
   the champion compared with, commit and pipeline-run as tags, the alias when the gate passed,
   and the alias re-read; then the model card as the version's description.
`reports/registry.json` records all of it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinoflow import tracking
from dinoflow.config import Config
from dinoflow.embedding.onnx_export import export_checked
from dinoflow.io import atomic_write_json
from dinoflow.models.artifact import BackboneArtifact
from dinoflow.models.weights import BACKBONE_FILE, CONFIG_FILE
from dinoflow.registry.card import model_card
from dinoflow.registry.dense_gate import dense_tags
from dinoflow.registry.evidence import EVAL_METRICS, EvalEvidence, check_evaluated, read_eval_report
from dinoflow.registry.gate import Champion, Verdict, gate_verdict
from dinoflow.registry.lineage import TAG_SHA256, TAG_TRAINING_RUN, context_tags, current_champion, training_run
from dinoflow.registry.lock import gate_lock

MODEL_TYPE = "dinoflow-embedding"
MISSING_STUDENT = "student backbone {path} not found: run `dinoflow distill` first (or set register.model_path)"
SNAPSHOT_FILES = (BACKBONE_FILE, CONFIG_FILE, "train_config.yaml")


def open_student(model_path: str | Path) -> BackboneArtifact:
    """register.model_path (a backbone.pth or its folder) → the student; DinoflowError when absent."""
    return BackboneArtifact.open(model_path, MISSING_STUDENT)


@dataclass(frozen=True)
class Submission:
    """What register judges, read and checked before MLflow sees anything."""

    student: Path  # where the student lives (lineage looks for the run that wrote this folder)
    staged: BackboneArtifact  # register's private copy of it: what was hashed, exported and logged
    sha256: str
    evidence: EvalEvidence  # eval.json, shown to have evaluated exactly these bytes


@dataclass(frozen=True)
class Candidate:
    """The student as logged to MLflow, before the gate judged it.

    `artifact` is register's private copy of the student (what was hashed, exported and logged)."""

    artifact: BackboneArtifact
    model_id: str
    logged_model_uri: str
    source_run_id: str
    context: dict[str, str]  # commit, pipeline run, parent run: tags for every record
    lineage: dict[str, Any]  # training run, how it was found, sha256, commit, DVC hashes (the model card's)
    onnx: dict[str, Any] | None


@dataclass(frozen=True)
class Judgement:
    """What the gate decided under the lock: the verdict, the new version with its tags, the alias holder after."""

    verdict: Verdict
    tags: dict[str, str]
    version: str
    holder: Champion | None


def version_tags(verdict: Verdict, lineage: dict[str, Any]) -> dict[str, str]:
    """The verdict, its numbers and the weights' identity as registered-version tags."""
    return {
        **verdict.tags(),
        TAG_SHA256: lineage["sha256"],
        TAG_TRAINING_RUN: lineage["training_run_id"] or "unknown",
    }


def _dataset(cfg: Config, name: str, fingerprint: str | None) -> Any:
    """An MLflow dataset entity for evaluation set `name` (a reference: source + fingerprint, no copy)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    spec = next((d for d in cfg.evaluate.datasets if d.name == name), None)
    if spec is not None and spec.test:
        local = "://" not in spec.test
        source = resolve_dataset_source(str(Path(spec.test).resolve()) if local else tracking.redact(spec.test))
    else:
        source = CodeDatasetSource({"dinoflow.eval_dataset": spec.kind if spec else name})
    # mlflow marks `profile` abstract, yet MetaDataset is its documented concrete class for metadata-only inputs
    # (MLflow stores a digest of at most 36 characters)
    return MetaDataset(source, name=name, digest=(fingerprint or "")[:32] or None)  # type: ignore[abstract]


def link_evaluation(cfg: Config, evidence: EvalEvidence, key: str, model_id: str) -> None:
    """Log the model's evaluation metrics linked to the LoggedModel and to each evaluation dataset."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    for ds_name, entry in (evidence.models.get(key) or {}).items():
        ds = _dataset(cfg, ds_name, evidence.eval_set(ds_name))
        metrics = {f"{ds_name}.{k}": float(entry[k]) for k in EVAL_METRICS if entry.get(k) is not None}
        mlflow.log_metrics(metrics, model_id=model_id, dataset=ds)
        mlflow.log_input(ds, context="evaluation", model=LoggedModelInput(model_id))


def _new_version(client: Any, name: str, model_id: str, run_id: str, tags: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="dinoflow student backbones (image embeddings); see each version's card"
        )
    except MlflowException as e:
        if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id)
    return str(mv.version)


def _onnx(cfg: Config, student: BackboneArtifact, prep: dict[str, Any], out_dir: Path) -> dict[str, Any] | None:
    oc = cfg.register.onnx
    if not oc.enabled:
        return None

    return export_checked(
        student.load(), out_dir, oc.image_size or prep["image_size"], prep["resize_ratio"], oc.opset, oc.atol
    )


def _snapshot(student: BackboneArtifact, into: Path) -> BackboneArtifact:
    """Copy the backbone (and the configs beside it) into `into`; returns the copy.

    Everything register hashes, exports and logs is read from this copy: a file replaced on disk
    while register runs can never be logged under another file's sha256.
    """
    into.mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT_FILES:
        src = student.path if name == BACKBONE_FILE else student.folder / name
        if src.is_file():
            shutil.copyfile(src, into / name)
    return BackboneArtifact.open(into)


def _lineage(
    client: Any, run: Any, student: Path, sha: str, model_name: str, commit: str | None
) -> tuple[Any, dict[str, Any]]:
    """The run that trained the student (or None) and the lineage the card and the tags record."""
    train_id, found = training_run(client, run, student, sha, model_name)
    train_run = client.get_run(train_id) if train_id else None
    data_hashes = {
        k[len("dvc.md5.") :]: v
        for k, v in (train_run.data.tags if train_run else {}).items()
        if k.startswith("dvc.md5.")
    }
    lineage = {
        "training_run_id": train_id,
        "training_run_found": found,
        "sha256": sha,
        "commit": commit,
        "data_hashes": data_hashes,
    }
    return train_run, lineage


def _log_candidate(cfg: Config, client: Any, run: Any, sub: Submission, prep: dict[str, Any]) -> Candidate:
    """What does not depend on the champion: the LoggedModel (weights, ONNX) with its lineage and
    linked evaluation metrics."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    from dinoflow.embedding.mlflow_model import log_embedding_model

    rc = cfg.register
    run = client.get_run(run.info.run_id)
    context = context_tags(run)
    commit = context.get("dinoflow.git.commit")
    train_run, lineage = _lineage(client, run, sub.student, sub.sha256, rc.model_name, commit)
    train_id = lineage["training_run_id"]
    source_run_id = train_id or run.info.run_id
    with tempfile.TemporaryDirectory(prefix="dinoflow-onnx-") as tmp:
        onnx_info = _onnx(cfg, sub.staged, prep, Path(tmp) / "onnx")
        lm = mlflow.initialize_logged_model(
            name="student",
            source_run_id=source_run_id,
            tags={TAG_SHA256: sub.sha256, TAG_TRAINING_RUN: train_id or "unknown", **context},
            params=dict(train_run.data.params) if train_run else None,  # its recipe
            model_type=MODEL_TYPE,
            experiment_id=run.info.experiment_id,
        )
        info = log_embedding_model(
            sub.staged,
            "student",
            cfg,
            model_id=lm.model_id,
            onnx_dir=Path(tmp) / "onnx" if onnx_info else None,
            metadata={"onnx": onnx_info},
            prep=prep,
        )
    if train_id:
        client.log_outputs(train_id, [LoggedModelOutput(lm.model_id, step=0)])
    link_evaluation(cfg, sub.evidence, rc.student_key, lm.model_id)
    return Candidate(sub.staged, lm.model_id, info.model_uri, source_run_id, context, lineage, onnx_info)


def _judge(cfg: Config, client: Any, cand: Candidate, evidence: EvalEvidence) -> Judgement:
    """Under the gate lock: read the champion, judge, register the version, move the alias, re-read it."""
    rc = cfg.register
    with gate_lock(client, rc.model_name):
        champion = current_champion(client, rc.model_name, rc.alias)
        verdict = gate_verdict(evidence.models, rc, evidence.eval_set(rc.dataset), champion, evidence.dense)
        tags = {**version_tags(verdict, cand.lineage), **dense_tags(evidence.dense, rc.student_key), **cand.context}
        version = _new_version(client, rc.model_name, cand.model_id, cand.source_run_id, tags)
        if verdict.passed:
            client.set_registered_model_alias(rc.model_name, rc.alias, version)
        holder = current_champion(client, rc.model_name, rc.alias)  # what the registry holds now
    return Judgement(verdict, tags, version, holder)


def _record_judgement(cfg: Config, client: Any, cand: Candidate, judged: Judgement, evidence: EvalEvidence) -> None:
    """The verdict on the register run (metrics, tag) and on the LoggedModel (tags); the card on the version."""
    rc = cfg.register
    tracking.log_metrics(judged.verdict.metrics())
    tracking.set_tags({"gate": "passed" if judged.verdict.passed else "failed"})
    client.set_logged_model_tags(cand.model_id, judged.tags)
    card = model_card(
        rc.model_name, judged.version, cand.artifact, evidence.models, judged.verdict, cand.lineage, evidence.dense
    )
    client.update_model_version(rc.model_name, judged.version, description=card)


def _outcome(cfg: Config, cand: Candidate, judged: Judgement) -> dict[str, Any]:
    """registry.json's record of a tracked registration."""
    rc = cfg.register
    version, holder = judged.version, judged.holder
    alias_uri = f"models:/{rc.model_name}@{rc.alias}" if holder else None
    return {
        "gate": judged.verdict.record(),
        "registered": True,
        "version": version,
        "model_uri": f"models:/{rc.model_name}/{version}",
        "logged_model_uri": cand.logged_model_uri,
        "model_id": cand.model_id,
        "took_alias": holder is not None and holder.version == version,
        "alias_version": holder.version if holder else None,
        "alias_uri": alias_uri,
        "champion_uri": alias_uri,
        "training_run_id": cand.lineage["training_run_id"],
        "training_run_found": cand.lineage["training_run_found"],
        "onnx": cand.onnx,
    }


def _register_tracked(cfg: Config, run: Any, sub: Submission, prep: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    client = mlflow.MlflowClient()
    cand = _log_candidate(cfg, client, run, sub, prep)
    judged = _judge(cfg, client, cand, sub.evidence)
    _record_judgement(cfg, client, cand, judged, sub.evidence)
    return _outcome(cfg, cand, judged)


def register(cfg: Config) -> dict[str, Any]:
    """Register the student as a new version; move the alias only when the gate passes. Returns registry.json's content."""
    rc = cfg.register
    student = open_student(rc.model_path)
    evidence = read_eval_report(rc.eval_report)
    with tempfile.TemporaryDirectory(prefix="dinoflow-register-") as tmp:
        staged = _snapshot(student, Path(tmp) / "student")
        sha = check_evaluated(evidence, rc.student_key, staged.path, shown_as=student.path)
        return _register_staged(cfg, Submission(student.path, staged, sha, evidence))


def _register_staged(cfg: Config, sub: Submission) -> dict[str, Any]:
    rc = cfg.register
    evidence = sub.evidence
    # a bad report is an error before anything reaches MLflow
    preview = gate_verdict(evidence.models, rc, evidence.eval_set(rc.dataset), None, evidence.dense)
    result: dict[str, Any] = {
        "model_name": rc.model_name,
        "alias": rc.alias,
        "model_sha256": sub.sha256,
        "registered": False,
    }
    with tracking.stage_run("register", cfg) as run:
        if run is None:
            result.update(
                gate=preview.record(),
                note="tracking disabled (tracking.enabled=false or not rank 0): nothing "
                "registered; the verdict ignores the champion",
            )
        else:
            uri = tracking.tracking_uri(cfg)
            from dinoflow.embedding.mlflow_model import log_embedding_model, preprocess_settings

            prep = preprocess_settings(cfg)  # once: the ONNX export and each logged model share it
            with tracking.named_errors(f"registering {rc.model_name}", uri):
                result.update(_register_tracked(cfg, run, sub, prep))
                if rc.teacher_path and Path(rc.teacher_path).exists():
                    teacher = log_embedding_model(rc.teacher_path, "teacher", cfg, prep=prep)
                    result["teacher_model_uri"] = teacher.model_uri
            result.update(run_id=run.info.run_id, tracking_uri=tracking.redact(uri))
        atomic_write_json(rc.report, result)
        tracking.log_artifact(rc.report, "reports")
    return result
