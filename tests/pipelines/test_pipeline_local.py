"""The whole DAG through kfp.local's SubprocessRunner (`dinoflow pipeline run --local`).

Two variants:
- stand-in stages (tests/components/standin_stages.py, injected into every component
  subprocess through a sitecustomize on PYTHONPATH): checks the DAG's artifact wiring (the
  curation fan-out's tasks into its global step, that into training), that register runs after
  every evaluate whatever the gate says (it applies the gate itself), and that the exit handler runs;
- the real stages on a tiny config, twice (the DAG curates the demo
  data through the fan-out, and pretrain/distill read what its global step wrote): the first
  run's student becomes `champion` under one MLflow parent run closed by the exit handler; with
  `distill.train.epochs=1` the second registers a worse version that does not take the alias.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "components"
FANOUT_TASKS = ("embed-0", "embed-1", "embed-2")  # the stand-in records of the decode + embed tasks

SITECUSTOMIZE = """
import standin_stages
standin_stages.install()
"""


def _cli_json(text: str) -> dict:
    """The CLI's JSON summary: the last thing printed (kfp.local logs to stdout before it)."""
    return json.loads(text[text.rindex('{\n  "pipeline_root"') :])


def _run_standin_dag(tmp_path: Path, monkeypatch, knn: float, capsys) -> tuple[dict, dict]:
    site = tmp_path / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "standin.log"
    # the inherited path stays after them: run from a checkout with its sources on PYTHONPATH, the
    # component subprocesses import that checkout's dinoflow, not an installed one
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(STANDINS), *inherited]))
    monkeypatch.setenv("DINOFLOW_STANDIN_LOG", str(log))
    monkeypatch.setenv("DINOFLOW_STANDIN_KNN", str(knn))
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "run",
            "--local",
            "-c",
            str(ROOT / "params.yaml"),
            "-S",
            "register.min_knn_top1=0.9",
            "--pipeline-root",
            str(tmp_path / "kfp"),
        ]
    )
    assert rc == 0
    records = {r["stage"]: r for r in map(json.loads, log.read_text().splitlines())}
    return records, _cli_json(capsys.readouterr().out)


def _order(records: dict) -> list[str]:
    """The stages in the order they ran; the decode + embed tasks in any order among themselves."""
    names = list(records)
    n = len(FANOUT_TASKS)
    return sorted(names[:n]) + names[n:]


@pytest.mark.slow
def test_dag_wiring_and_gate_with_standin_stages(tmp_path, monkeypatch, capsys):
    rec, out = _run_standin_dag(tmp_path / "pass", monkeypatch, knn=0.95, capsys=capsys)
    # curate is the fan-out: a decode + embed task per partition group (the stand-in pool has 3
    # partitions, fewer than the default 4 groups), then the global step, then the rest
    assert _order(rec) == [*FANOUT_TASKS, "curate", "pretrain", "distill", "evaluate", "register"]
    assert [rec[t]["partitions"] for t in FANOUT_TASKS] == [[0], [1], [2]]
    assert rec["curate"]["parts"] == ["pool-00000.npy", "pool-00001.npy", "pool-00002.npy"]
    assert len({rec[t]["work_dir"] for t in FANOUT_TASKS}) == 3  # each task wrote its own output
    # each step consumed the artifact the previous one produced
    assert rec["pretrain"]["data"] == rec["curate"]["out_dir"] == rec["distill"]["data"]
    assert rec["distill"]["teacher"] == rec["pretrain"]["out_dir"]
    assert rec["evaluate"]["models"]["student"] == rec["distill"]["out_dir"] + "/backbone.pth"
    assert rec["register"]["model_path"] == rec["distill"]["out_dir"]
    assert rec["register"]["eval_report"] == rec["evaluate"]["report_dir"] + "/eval.json"
    assert all(str(tmp_path / "pass" / "kfp") in rec[s]["out_dir"] for s in ("curate", "pretrain", "distill"))
    assert out["pipeline_root"] == str((tmp_path / "pass" / "kfp").resolve())

    assert rec["register"]["passed"] is True
    rec_fail, _ = _run_standin_dag(tmp_path / "fail", monkeypatch, knn=0.5, capsys=capsys)
    assert _order(rec_fail) == [*FANOUT_TASKS, "curate", "pretrain", "distill", "evaluate", "register"], (
        "register runs below the gate too"
    )
    assert rec_fail["register"]["passed"] is False


def _check_fan_out(root: Path) -> Path:
    """The DAG curated through the fan-out: at least two decode + embed tasks each wrote embedding
    shards, and the global step computed none itself. Returns the curated dataset it produced."""
    tasks = [p for p in root.rglob("embeddings") if p.is_dir()]
    assert len(tasks) >= 2, tasks
    shards = [{f.name for f in (t / "parts").iterdir()} for t in tasks]
    assert all(shards) and not set.intersection(*shards), "each task embedded its own partitions"
    (report,) = root.rglob("curate-global/reports/curation.json")
    used = json.loads(report.read_text())["embedding_shards"]
    assert used["partitions_computed"] == 0, used  # every partition came from a task
    (curated,) = root.rglob("curate-global/curated")
    assert (curated / "manifest.json").is_file() and not (curated / ".curate").exists()
    return curated


def _registry_record(out: dict) -> dict:
    (registry,) = Path(out["pipeline_root"]).rglob("register/registry")
    return json.loads(registry.read_text())


@pytest.mark.slow
def test_whole_dag_with_real_stages_crowns_then_keeps_the_champion(tmp_path, monkeypatch, capsys):
    import mlflow
    from tiny_pipeline import TINY_REGISTRY_PIPELINE

    from dinoflow.tracking.provenance import hash_input, tag_key

    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)

    def run(root: str, *extra: str) -> dict:
        args = ["run", "--local", "--demo", "-c", str(ROOT / "params.yaml"), "--pipeline-root", str(tmp_path / root)]
        for s in [*TINY_REGISTRY_PIPELINE, "register.onnx.enabled=false", *extra]:
            args += ["-S", s]
        assert main(args) == 0
        return _cli_json(capsys.readouterr().out)

    out = run("kfp1")
    root = Path(out["pipeline_root"])
    curated = _check_fan_out(root)
    assert list(root.rglob("backbone.pth")), "teacher and student backbones are artifacts"
    (eval_json,) = root.rglob("evaluate/reports/eval.json")
    assert {"teacher", "student", "random_init", "raw_pixels", "_provenance"} <= set(json.loads(eval_json.read_text()))
    first = _registry_record(out)
    assert first["registered"] and first["took_alias"] and first["version"] == "1", first["gate"]
    assert first["champion_uri"] == "models:/dinoflow-student@champion"

    # one MLflow parent run for the pipeline run; the exit handler closed it
    client = mlflow.MlflowClient(db)
    exp = client.get_experiment_by_name("dinoflow").experiment_id
    stages = client.search_runs(
        [exp], filter_string=f"tags.`dinoflow.pipeline_run_id` = '{out['run_id']}' and tags.`dinoflow.stage` != ''"
    )
    assert {r.data.tags["dinoflow.stage"] for r in stages} == {"curate", "pretrain", "distill", "evaluate", "register"}
    (parent,) = {r.data.tags["mlflow.parentRunId"] for r in stages}
    # pretrain and distill read the fan-out's curated dataset: its path and its DVC md5
    digest = hash_input(curated).digest
    for r in stages:
        if r.data.tags["dinoflow.stage"] in ("pretrain", "distill"):
            assert r.data.tags[tag_key("dvc.md5", str(curated))] == digest, r.data.tags["dinoflow.stage"]
    parent_run = client.get_run(parent)
    assert parent_run.data.tags["dinoflow.pipeline_run_id"] == out["run_id"] and parent_run.info.status == "FINISHED"

    second = _registry_record(run("kfp2", "distill.train.epochs=1"))
    assert second["registered"] and second["version"] == "2", "register runs even when the gate fails"
    assert not second["took_alias"] and second["alias_version"] == "1"
    assert second["gate"]["knn_top1"] < first["gate"]["knn_top1"] - 0.1
    assert any("champion version 1" in r for r in second["gate"]["reasons"])
    assert str(client.get_model_version_by_alias("dinoflow-student", "champion").version) == "1"
    assert client.get_model_version("dinoflow-student", "2").tags["gate"] == "failed"
