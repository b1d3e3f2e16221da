"""The demo's summary: the gate's verdict and the champion's URI, read back from registry.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from register_project import GIT, register_project

from dinoflow.config import load_config
from dinoflow.demo.command import registry_lines, registry_mismatch

BIN = Path(sys.executable).parent


def test_summary_prints_the_champion_uri():
    reg = {
        "registered": True,
        "version": "1",
        "model_uri": "models:/dinoflow-student/1",
        "took_alias": True,
        "alias": "champion",
        "alias_version": "1",
        "alias_uri": "models:/dinoflow-student@champion",
        "champion_uri": "models:/dinoflow-student@champion",
        "gate": {"passed": True, "reasons": []},
    }
    text = "\n".join(registry_lines(reg))
    assert "registry gate: PASSED" in text and "this run:  models:/dinoflow-student/1  (took the alias)" in text
    assert "champion:  models:/dinoflow-student@champion  (version 1)" in text
    assert "dinoflow embed models:/dinoflow-student@champion" in text


def test_summary_of_a_candidate_that_did_not_take_the_alias():
    reg = {
        "registered": True,
        "version": "2",
        "model_uri": "models:/m/2",
        "took_alias": False,
        "alias": "champion",
        "alias_version": "1",
        "alias_uri": "models:/m@champion",
        "gate": {"passed": False, "reasons": ["retention 0.8 < min_retention 0.95"]},
    }
    text = "\n".join(registry_lines(reg))
    assert "registry gate: NOT PASSED  retention 0.8 < min_retention 0.95" in text
    assert "(registered as a candidate)" in text and "champion:  models:/m@champion  (version 1)" in text
    first_failure = {**reg, "alias_version": None, "alias_uri": None}
    assert "champion:  none yet (alias 'champion' unset)" in "\n".join(registry_lines(first_failure))
    assert registry_lines({}) == []


@pytest.mark.slow
def test_demo_after_the_tracking_uri_changed_reports_only_what_the_registry_in_use_holds(tmp_path):
    """`dinoflow demo` with the real dvc CLI: registered into store A, then run against store B. DVC keeps
    `register` (its inputs did not change), so registry.json still names A's version; the demo notices,
    registers into B, and prints a champion B holds."""
    repo = tmp_path / "repo"
    register_project(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(GIT, DVC_NO_ANALYTICS="1", DINOFLOW_STATE_DIR=str(tmp_path / "state"))
    env["PATH"] = f"{BIN}:{env['PATH']}"
    for cmd in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "p"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    store_a, store_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    demo = lambda uri: subprocess.run(  # noqa: E731
        [str(BIN / "dinoflow"), "demo"],
        cwd=repo,
        env={**env, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=900,
    )
    first = demo(store_a)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "champion:  models:/dinoflow-student@champion  (version 1)" in first.stdout
    assert "registering again" not in first.stdout
    model_a = json.loads((repo / "reports" / "registry.json").read_text())["model_id"]

    second = demo(store_b)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "does not exist: DVC kept `register`" in second.stdout, second.stdout[-3000:]
    reg = json.loads((repo / "reports" / "registry.json").read_text())
    assert reg["tracking_uri"] == store_b and reg["model_id"] != model_a
    held = mlflow.MlflowClient(store_b).get_model_version_by_alias("dinoflow-student", "champion")
    assert held.source == f"models:/{reg['model_id']}"
    assert "champion:  models:/dinoflow-student@champion  (version 1)" in second.stdout


def test_registry_mismatch_names_the_registry_in_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'a.db'}"
    client = mlflow.MlflowClient(store)
    exp = client.create_experiment("e")
    model = client.create_logged_model(exp)
    client.create_registered_model("m")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)  # create_model_version looks the LoggedModel up through the global URI
    try:
        client.create_model_version("m", source=f"models:/{model.model_id}", model_id=model.model_id)
    finally:
        mlflow.set_tracking_uri(before)
    reg = {"registered": True, "model_name": "m", "version": "1", "model_id": model.model_id, "tracking_uri": store}
    (tmp_path / "registry.json").write_text(json.dumps(reg))
    cfg = lambda uri: load_config(None, [f"tracking.tracking_uri={uri}", "register.report=registry.json"])  # noqa: E731
    assert registry_mismatch(cfg(store)) is None
    assert "the registry in use (sqlite:///" in registry_mismatch(cfg(f"sqlite:///{tmp_path / 'b.db'}"))
    (tmp_path / "registry.json").write_text(json.dumps({**reg, "version": "7"}))
    assert "holds no such version" in registry_mismatch(cfg(store))
    (tmp_path / "registry.json").write_text(json.dumps({**reg, "model_id": "m-other"}))
    assert "is another model" in registry_mismatch(cfg(store))
