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
from pathlib import Path
from typing import Any

from dinoflow import tracking
from dinoflow.config import Config
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_json
from dinoflow.registry.card import model_card
from dinoflow.registry.dense_gate import dense_tags
from dinoflow.registry.evidence import EVAL_METRICS, EvalEvidence, check_evaluated, read_eval_report
from dinoflow.registry.gate import gate_verdict
from dinoflow.registry.lineage import TAG_SHA256, TAG_TRAINING_RUN, context_tags, current_champion, training_run
from dinoflow.registry.lock import gate_lock

MODEL_TYPE = "dinoflow-embedding"


def model_file(path: str | Path) -> Path:
    """register.model_path (a backbone.pth or its folder) → the backbone file; DinoflowError when absent."""
    p = Path(path)
    pth = p / "backbone.pth" if p.is_dir() or not p.suffix else p
    if not pth.is_file():
        raise DinoflowError(
            f"student backbone {pth} not found: run `dinoflow distill` first (or set register.model_path)"
        )
    return pth


def version_tags(verdict: dict[str, Any], sha256: str, training_run_id: str | None) -> dict[str, str]:
    """The verdict and its numbers as registered-version tags."""

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.6f}"

    champion = verdict.get("champion") or {}
    tags = {
        "gate": "passed" if verdict["passed"] else "failed",
        "gate.floors": "passed" if verdict["floors_passed"] else "failed",
        "gate.dataset": verdict["dataset"],
        "gate.eval_set": verdict.get("eval_set") or "unrecorded",
        **{
            f"gate.{k}": num(verdict[k])
            for k in ("knn_top1", "teacher_knn_top1", "random_init_knn_top1", "retention", "teacher_gain")
        },
        "gate.champion_version": champion.get("version") or "none",
        "gate.champion_knn_top1": num(champion.get("knn_top1")),
        TAG_SHA256: sha256,
        TAG_TRAINING_RUN: training_run_id or "unknown",
    }
    if verdict["reasons"]:
        tags["gate.reasons"] = "; ".join(verdict["reasons"])[:5000]
    return tags


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
    return MetaDataset(source, name=name, digest=(fingerprint or "")[:32] or None)  # MLflow stores ≤ 36 chars


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


def _onnx(cfg: Config, backbone: Any, out_dir: Path) -> dict[str, Any] | None:
    oc = cfg.register.onnx
    if not oc.enabled:
        return None
    from dinoflow.embedding.mlflow_model import preprocess_settings
    from dinoflow.embedding.onnx_export import export_checked

    prep = preprocess_settings(cfg)
    return export_checked(
        backbone, out_dir, oc.image_size or prep["image_size"], prep["resize_ratio"], oc.opset, oc.atol
    )


GATE_NUMBERS = ("knn_top1", "teacher_knn_top1", "random_init_knn_top1", "retention", "teacher_gain")
SNAPSHOT_FILES = ("backbone.pth", "config.yaml", "train_config.yaml")


def _snapshot(pth: Path, into: Path) -> Path:
    """Copy the backbone (and the configs beside it) into `into`; returns the copy of the backbone.

    Everything register hashes, exports and logs is read from this copy: a file replaced on disk
    while register runs can never be logged under another file's sha256.
    """
    into.mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT_FILES:
        src = pth if name == "backbone.pth" else pth.parent / name
        if src.is_file():
            shutil.copyfile(src, into / name)
    return into / "backbone.pth"


def _log_candidate(
    cfg: Config, client: Any, run: Any, pth: Path, staged: Path, sha: str, evidence: EvalEvidence
) -> dict[str, Any]:
    """What does not depend on the champion: the LoggedModel (weights, ONNX) with its lineage and
    linked evaluation metrics. `pth` is where the student lives (lineage), `staged` its copy (bytes)."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    from dinoflow.embedding.mlflow_model import log_embedding_model
    from dinoflow.models import load_backbone

    rc = cfg.register
    backbone = load_backbone(staged).eval()
    run = client.get_run(run.info.run_id)
    train_id, found = training_run(client, run, pth, sha, rc.model_name)
    context = context_tags(run)
    train_run = client.get_run(train_id) if train_id else None
    with tempfile.TemporaryDirectory(prefix="dinoflow-onnx-") as tmp:
        onnx_info = _onnx(cfg, backbone, Path(tmp) / "onnx")
        lm = mlflow.initialize_logged_model(
            name="student",
            source_run_id=train_id or run.info.run_id,
            tags={TAG_SHA256: sha, TAG_TRAINING_RUN: train_id or "unknown", **context},
            params=dict(train_run.data.params) if train_run else None,  # its recipe
            model_type=MODEL_TYPE,
            experiment_id=run.info.experiment_id,
        )
        info = log_embedding_model(
            staged,
            "student",
            cfg,
            model_id=lm.model_id,
            onnx_dir=Path(tmp) / "onnx" if onnx_info else None,
            metadata={"onnx": onnx_info},
        )
    if train_id:
        client.log_outputs(train_id, [LoggedModelOutput(lm.model_id, step=0)])
    link_evaluation(cfg, evidence, rc.student_key, lm.model_id)
    data_hashes = {
        k[len("dvc.md5.") :]: v
        for k, v in (train_run.data.tags if train_run else {}).items()
        if k.startswith("dvc.md5.")
    }
    lineage = {
        "training_run_id": train_id,
        "training_run_found": found,
        "sha256": sha,
        "commit": context.get("dinoflow.git.commit"),
        "data_hashes": data_hashes,
    }
    return {
        "backbone": backbone,
        "model_id": lm.model_id,
        "logged_model_uri": info.model_uri,
        "source_run_id": train_id or run.info.run_id,
        "context": context,
        "lineage": lineage,
        "onnx": onnx_info,
    }


def _judge(cfg: Config, client: Any, cand: dict[str, Any], evidence: EvalEvidence) -> dict[str, Any]:
    """Under the gate lock: read the champion, judge, register the version, move the alias, re-read it.

    Returns the verdict, the new version and the alias holder after the move.
    """
    rc = cfg.register
    lineage = cand["lineage"]
    with gate_lock(client, rc.model_name):
        champion = current_champion(client, rc.model_name, rc.alias)
        verdict = gate_verdict(evidence.models, rc, evidence.eval_set(rc.dataset), champion, evidence.dense)
        tags = {
            **version_tags(verdict, lineage["sha256"], lineage["training_run_id"]),
            **dense_tags(evidence.dense, rc.student_key),
            **cand["context"],
        }
        version = _new_version(client, rc.model_name, cand["model_id"], cand["source_run_id"], tags)
        if verdict["passed"]:
            client.set_registered_model_alias(rc.model_name, rc.alias, version)
        holder = current_champion(client, rc.model_name, rc.alias)  # what the registry holds now
    return {"verdict": verdict, "tags": tags, "version": version, "holder": holder}


def _register_tracked(
    cfg: Config, run: Any, pth: Path, staged: Path, sha: str, evidence: EvalEvidence
) -> dict[str, Any]:
    import mlflow

    rc = cfg.register
    client = mlflow.MlflowClient()
    cand = _log_candidate(cfg, client, run, pth, staged, sha, evidence)
    judged = _judge(cfg, client, cand, evidence)
    verdict, version, holder = judged["verdict"], judged["version"], judged["holder"]
    tracking.log_metrics({f"gate.{k}": verdict[k] for k in GATE_NUMBERS if verdict[k] is not None})
    tracking.set_tags({"gate": "passed" if verdict["passed"] else "failed"})
    client.set_logged_model_tags(cand["model_id"], judged["tags"])
    lineage = cand["lineage"]
    client.update_model_version(
        rc.model_name,
        version,
        description=model_card(
            rc.model_name, version, staged, cand["backbone"], evidence.models, verdict, lineage, evidence.dense
        ),
    )
    alias_uri = f"models:/{rc.model_name}@{rc.alias}" if holder else None
    return {
        "gate": verdict,
        "registered": True,
        "version": version,
        "model_uri": f"models:/{rc.model_name}/{version}",
        "logged_model_uri": cand["logged_model_uri"],
        "model_id": cand["model_id"],
        "took_alias": holder is not None and holder.version == version,
        "alias_version": holder.version if holder else None,
        "alias_uri": alias_uri,
        "champion_uri": alias_uri,
        "training_run_id": lineage["training_run_id"],
        "training_run_found": lineage["training_run_found"],
        "onnx": cand["onnx"],
    }


def register(cfg: Config) -> dict[str, Any]:
    """Register the student as a new version; move the alias only when the gate passes. Returns registry.json's content."""
    rc = cfg.register
    pth = model_file(rc.model_path)
    evidence = read_eval_report(rc.eval_report)
    with tempfile.TemporaryDirectory(prefix="dinoflow-register-") as tmp:
        staged = _snapshot(pth, Path(tmp) / "student")
        sha = check_evaluated(evidence, rc.student_key, staged, shown_as=pth)
        return _register_staged(cfg, pth, staged, sha, evidence)


def _register_staged(cfg: Config, pth: Path, staged: Path, sha: str, evidence: EvalEvidence) -> dict[str, Any]:
    rc = cfg.register
    # a bad report is an error before anything reaches MLflow
    preview = gate_verdict(evidence.models, rc, evidence.eval_set(rc.dataset), None, evidence.dense)
    result: dict[str, Any] = {"model_name": rc.model_name, "alias": rc.alias, "model_sha256": sha, "registered": False}
    with tracking.stage_run("register", cfg) as run:
        if run is None:
            result.update(
                gate=preview,
                note="tracking disabled (tracking.enabled=false or not rank 0): nothing "
                "registered; the verdict ignores the champion",
            )
        else:
            uri = tracking.tracking_uri(cfg)
            from dinoflow.embedding.mlflow_model import log_embedding_model

            with tracking.named_errors(f"registering {rc.model_name}", uri):
                result.update(_register_tracked(cfg, run, pth, staged, sha, evidence))
                if rc.teacher_path and Path(rc.teacher_path).exists():
                    result["teacher_model_uri"] = log_embedding_model(rc.teacher_path, "teacher", cfg).model_uri
            result.update(run_id=run.info.run_id, tracking_uri=tracking.redact(uri))
        atomic_write_json(rc.report, result)
        tracking.log_artifact(rc.report, "reports")
    return result
