"""The whole DAG through kfp.local's SubprocessRunner (`dinoflow pipeline run --local`).

Two variants:
- stand-in stages (tests/components/standin_stages.py, injected into every component
  subprocess through a sitecustomize on PYTHONPATH): checks the DAG's artifact wiring, that
  register runs whatever the gate says, and that the exit handler runs;
- the real stages on the tiny demo config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dinoflow.pipeline_cli import main

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "components"

SITECUSTOMIZE = """
import sys, types
import dinoflow.stages
import standin_stages as s
dinoflow.stages.STAGES.update(s.STAGE_TABLE)
registry = types.ModuleType("dinoflow.registry")
registry.read_eval_report, registry.gate_verdict = s.read_eval_report, s.gate_verdict
sys.modules["dinoflow.registry"] = registry
"""


def _cli_json(text: str) -> dict:
    """The CLI's JSON summary: the last thing printed (kfp.local logs to stdout before it)."""
    return json.loads(text[text.rindex('{\n  "pipeline_root"'):])


def _run_standin_dag(tmp_path: Path, monkeypatch, knn: float, capsys) -> tuple[dict, dict]:
    site = tmp_path / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "standin.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(STANDINS)]))
    monkeypatch.setenv("DINOFLOW_STANDIN_LOG", str(log))
    monkeypatch.setenv("DINOFLOW_STANDIN_KNN", str(knn))
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--local", "-c", str(ROOT / "params.yaml"), "-S", "register.min_knn_top1=0.9",
               "--pipeline-root", str(tmp_path / "kfp")])
    assert rc == 0
    records = {r["stage"]: r for r in map(json.loads, log.read_text().splitlines())}
    return records, _cli_json(capsys.readouterr().out)


@pytest.mark.slow
def test_dag_wiring_and_gate_with_standin_stages(tmp_path, monkeypatch, capsys):
    rec, out = _run_standin_dag(tmp_path / "pass", monkeypatch, knn=0.95, capsys=capsys)
    assert list(rec) == ["curate", "pretrain", "distill", "evaluate", "register"]
    # each step consumed the artifact the previous one produced
    assert rec["pretrain"]["data"] == rec["curate"]["out_dir"] == rec["distill"]["data"]
    assert rec["distill"]["teacher"] == rec["pretrain"]["out_dir"]
    assert rec["evaluate"]["models"]["student"] == rec["distill"]["out_dir"] + "/backbone.pth"
    assert rec["register"]["model_path"] == rec["distill"]["out_dir"]
    assert rec["register"]["eval_report"] == rec["evaluate"]["report_dir"] + "/eval.json"
    assert all(str(tmp_path / "pass" / "kfp") in rec[s]["out_dir"] for s in ("curate", "pretrain", "distill"))
    assert out["pipeline_root"] == str((tmp_path / "pass" / "kfp").resolve())

    rec_fail, _ = _run_standin_dag(tmp_path / "fail", monkeypatch, knn=0.5, capsys=capsys)
    assert list(rec_fail) == ["curate", "pretrain", "distill", "evaluate", "register"], \
        "every candidate is registered; the gate inside register decides the alias"


@pytest.mark.slow
def test_whole_dag_on_the_demo_config_with_real_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    small = [
        "pretrain.train.max_steps=3", "pretrain.train.batch_size_per_rank=32",
        "distill.train.max_steps=3", "distill.train.batch_size_per_rank=32",
        "evaluate.max_train=150", "evaluate.max_test=50", "evaluate.linear_epochs=1", "evaluate.linear_lrs=[0.1]",
        "evaluate.logreg_cs=[1.0]", "evaluate.logreg_max_iter=50", "evaluate.n_pca_images=0", "evaluate.progress=false",
        "register.min_knn_top1=0.0", "register.min_retention=0.0",
    ]
    args = ["run", "--local", "--demo", "-c", str(ROOT / "params.yaml"), "--pipeline-root", str(tmp_path / "kfp")]
    for s in small:
        args += ["-S", s]
    assert main(args) == 0
    out = _cli_json(capsys.readouterr().out)
    root = Path(out["pipeline_root"])
    assert list(root.rglob("backbone.pth")), "teacher and student backbones are artifacts"
    (eval_json,) = root.rglob("evaluate/reports/eval.json")
    assert {"teacher", "student", "raw_pixels"} <= set(json.loads(eval_json.read_text()))
    (registry,) = root.rglob("register/registry")  # register ran: the gate (thresholds 0) passed
    rec = json.loads(registry.read_text())
    assert rec["registered"] is True and rec["gate"]["passed"] is True and rec["alias"] == "champion"
    # one MLflow parent run for the pipeline run; the exit handler closed it
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dinoflow").experiment_id
    stages = client.search_runs([exp], filter_string=f"tags.`dinoflow.pipeline_run_id` = '{out['run_id']}' "
                                                     "and tags.`dinoflow.stage` != ''")
    assert {r.data.tags["dinoflow.stage"] for r in stages} == {"curate", "pretrain", "distill", "evaluate", "register"}
    (parent,) = {r.data.tags["mlflow.parentRunId"] for r in stages}
    parent_run = client.get_run(parent)
    assert parent_run.data.tags["dinoflow.pipeline_run_id"] == out["run_id"] and parent_run.info.status == "FINISHED"
