"""Acceptance under DVC, with the project's dvc.yaml and the real stages on a tiny config:
`dinoflow demo` on a fresh checkout registers the student as `champion` and prints its URI;
`dvc exp run -S distill.train.epochs=1` registers a worse version that does not take the alias."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from tiny_pipeline import TINY_REGISTRY_PIPELINE, as_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def test_demo_crowns_a_champion_and_a_one_epoch_student_does_not_take_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = as_params(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_REGISTRY_PIPELINE)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        **GIT,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": db,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "fresh clone"], repo, env)

    out = sh([str(BIN / "dinoflow"), "demo"], repo, env)  # `make demo` without the install
    first = json.loads((repo / "reports" / "registry.json").read_text())
    assert first["version"] == "1" and first["took_alias"] and first["alias_version"] == "1", first["gate"]
    assert "registry gate: PASSED" in out and "champion:  models:/dinoflow-student@champion  (version 1)" in out
    onnx = first["onnx"]
    assert onnx["parity_max_abs_error"] <= 1e-4 and onnx["resolution"] == "native"

    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "pipeline"], repo, env)
    sh([str(BIN / "dvc"), "exp", "run", "-S", "distill.train.epochs=1"], repo, env)
    second = json.loads((repo / "reports" / "registry.json").read_text())
    gate = second["gate"]
    assert second["version"] == "2" and not second["took_alias"] and second["alias_version"] == "1"
    assert gate["knn_top1"] < first["gate"]["knn_top1"] - 0.1, (
        "one epoch inside the warmup leaves the student near chance"
    )
    assert gate["champion"]["version"] == "1" and gate["champion"]["eval_set"] == gate["eval_set"]
    assert any("champion version 1" in r for r in gate["reasons"]) and any("retention" in r for r in gate["reasons"])

    client = mlflow.MlflowClient(db)
    assert str(client.get_model_version_by_alias("dinoflow-student", "champion").version) == "1"
    v2 = client.get_model_version("dinoflow-student", "2")
    assert v2.tags["gate"] == "failed" and v2.tags["gate.champion_version"] == "1"
    # both versions' sources are LoggedModels of the distill runs that trained them
    for version, rec in (("1", first), ("2", second)):
        mv = client.get_model_version("dinoflow-student", version)
        assert mv.run_id == rec["training_run_id"] and mv.source == f"models:/{rec['model_id']}"
        assert client.get_run(mv.run_id).data.tags["dinoflow.stage"] == "distill"
