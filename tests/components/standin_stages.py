"""Stand-in stage functions for the component/DAG wiring tests.

These write the files each real stage promises (the stage contracts in docs/architecture.md), check that their
inputs exist, and record the paths they were given, so the tests can assert the wiring in
seconds; tests that run the real stages are separate. The registry gate is never stood in for:
`evaluate` writes an eval.json in the real format (results, the sha256 of each model file it was
given, a dataset fingerprint) and `register` judges it with the real evidence checks and the real
gate (`dinoflow.registry.gate`); only the MLflow registration itself is left out.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

LOG_ENV = "DINOFLOW_STANDIN_LOG"


def _record(stage: str, **paths: Any) -> None:
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"stage": stage, **paths}) + "\n")


def _need(path: str | Path) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"stand-in stage: expected input {path} is missing")


def curate(cfg) -> dict[str, Any]:
    """Records the embedding shards it was given (curate.work_dir: the fan-out's gathered parts)."""
    out, rep = Path(cfg.curate.out_dir), Path(cfg.curate.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep.mkdir(parents=True, exist_ok=True)
    (out / "shard-000000.tar").write_bytes(b"tar")
    (out / "manifest.json").write_text("{}")
    summary = {"funnel": {"input": 5, "kept": 3}, "note": "text is not a metric"}
    (rep / "curation.html").write_text("<html>funnel</html>")
    (rep / "curation.json").write_text(json.dumps(summary))
    work = cfg.curate.work_dir
    parts = sorted(p.name for p in (Path(work) / "parts").iterdir()) if work else None
    _record("curate", out_dir=str(out), report_dir=str(rep), parts=parts)
    return summary


STANDIN_PARTITIONS = 3  # the pool the stand-in plan lists


def fanout_groups(cfg, max_groups: int) -> list[int]:
    """Stand-in for dinoflow.launch.curation_fanout.fanout_groups: a pool of STANDIN_PARTITIONS partitions."""
    return list(range(min(int(max_groups), STANDIN_PARTITIONS)))


def embed_group(cfg, group: int, groups: int, work_dir) -> dict[str, Any]:
    """Stand-in for dinoflow.launch.curation_fanout.embed_group: one embedding shard per partition of the group."""
    parts = Path(work_dir) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    mine = [p for p in range(STANDIN_PARTITIONS) if p % int(groups) == int(group)]
    for p in mine:
        (parts / f"pool-{p:05d}.npy").write_bytes(b"emb")
    _record(f"embed-{int(group)}", work_dir=str(work_dir), partitions=mine)
    return {"group": int(group), "partitions_computed": len(mine)}


def _train(stage: str, data: str, out_dir: str, csv: str, teacher: str | None = None) -> dict[str, Any]:
    _need(Path(data) / "manifest.json")
    if teacher is not None:
        _need(Path(teacher) / "backbone.pth")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.pth").write_bytes(b"weights")
    (out / "config.yaml").write_text(f"stage: {stage}\n")
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    Path(csv).write_text("step,loss\n1,2.0\n")
    _record(stage, data=data, out_dir=out_dir, report_csv=csv, teacher=teacher, world_size=os.environ.get("WORLD_SIZE"))
    return {"steps": 1}


def pretrain(cfg) -> dict[str, Any]:
    p = cfg.pretrain
    return _train("pretrain", p.data, p.out_dir, p.report_csv)


def distill(cfg) -> dict[str, Any]:
    d = cfg.distill
    return _train("distill", d.data, d.out_dir, d.report_csv, teacher=d.teacher)


# the teacher and random-init scores the stand-in evaluation reports next to the student's
# (DINOFLOW_STANDIN_KNN): the default student, 0.95, passes params.yaml's floors; 0.5 fails retention
TEACHER_KNN, RANDOM_INIT_KNN = 0.96, 0.10


def evaluate(cfg) -> dict[str, Any]:
    from dinoflow.digest import file_sha256
    from dinoflow.evaluation.report import PROVENANCE_KEY

    for path in cfg.evaluate.models.values():
        _need(path)
    rep = Path(cfg.evaluate.report_dir)
    rep.mkdir(parents=True, exist_ok=True)
    knn = float(os.environ.get("DINOFLOW_STANDIN_KNN", "0.95"))
    scores = {"student": knn, "teacher": TEACHER_KNN, "random_init": RANDOM_INIT_KNN}
    report: dict[str, Any] = {name: {"mnist": {"knn_top1": v}} for name, v in scores.items()}
    report[PROVENANCE_KEY] = {
        "models": {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in cfg.evaluate.models.items()},
        "datasets": {"mnist": {"fingerprint": "standin-mnist"}},
    }
    (rep / "eval.json").write_text(json.dumps(report))
    (rep / "eval.md").write_text(f"| model | k-NN |\n|---|---|\n| student | {knn} |\n")
    _record("evaluate", models=dict(cfg.evaluate.models), report_dir=str(rep))
    return {"mnist": {"student": {"knn_top1": knn}}}


def register(cfg) -> dict[str, Any]:
    """The register stage up to MLflow: the real evidence checks and the real gate (no champion yet);
    "registers" version 1 and, when the gate passes, gives it the alias."""
    from dinoflow.registry.evidence import check_evaluated, read_eval_report
    from dinoflow.registry.gate import gate_verdict
    from dinoflow.registry.stage import open_student

    rc = cfg.register
    evidence = read_eval_report(rc.eval_report)
    check_evaluated(evidence, rc.student_key, open_student(rc.model_path).path)
    gate = gate_verdict(evidence.models, rc, evidence.eval_set(rc.dataset), None)
    passed = gate.passed
    result = {
        "model_name": rc.model_name,
        "alias": rc.alias,
        "registered": True,
        "version": "1",
        "gate": gate.record(),
        "alias_version": "1" if passed else None,
        "alias_uri": f"models:/{rc.model_name}@{rc.alias}" if passed else None,
    }
    Path(rc.report).write_text(json.dumps(result))
    _record("register", model_path=rc.model_path, eval_report=rc.eval_report, report=rc.report, passed=passed)
    return result


def stage_table() -> dict:
    from dinoflow.stages import Stage

    here = sys.modules[__name__]
    return {
        name: Stage(name, getattr(here, name)) for name in ("curate", "pretrain", "distill", "evaluate", "register")
    }


# the fan-out's per-task functions (dinoflow.launch.curation_fanout), which read the real pool
FANOUT_FUNCTIONS = ("fanout_groups", "embed_group")


def install() -> None:
    """Route this process's stages and fan-out functions to the stand-ins (kfp.local component
    subprocesses: the DAG tests import this from a sitecustomize)."""
    import dinoflow.launch.curation_fanout as fanout
    import dinoflow.stages

    dinoflow.stages.STAGES.update(stage_table())
    for name in FANOUT_FUNCTIONS:
        setattr(fanout, name, getattr(sys.modules[__name__], name))
