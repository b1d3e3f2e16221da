"""A relative local tracking store inside DVC's temporary experiment workspaces means the project's store:
`dvc exp run --temp` and `--queue` with the real dvc CLI register into the project's registry, not into a
database DVC deletes afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from register_project import GIT, register_project

from dinoflow.tracking import tracking_uri
from dinoflow.tracking.workspace import resolve_store

BIN = Path(sys.executable).parent


def test_relative_stores_resolve_to_the_project_only_inside_a_temporary_workspace(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    temp = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmpa1b2"
    (temp / ".dvc").mkdir(parents=True)
    (temp / "sub").mkdir()
    assert resolve_store("sqlite:///mlflow.db", temp) == f"sqlite:///{project}/mlflow.db"
    assert resolve_store("sqlite:///db/m.db", temp / "sub") == f"sqlite:///{project}/sub/db/m.db"
    assert resolve_store("mlruns", temp) == f"{project}/mlruns"
    assert resolve_store("file:mlruns", temp) == f"file://{project}/mlruns"
    for unchanged in ("sqlite:////abs/m.db", "http://mlflow:5000", "sqlite:///mlflow.db"):
        where = project if unchanged == "sqlite:///mlflow.db" else temp
        assert resolve_store(unchanged, where) == unchanged
    monkeypatch.chdir(temp)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{project}/mlflow.db", "the default store too"


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.mark.slow
def test_dvc_temp_and_queued_experiments_register_into_the_projects_registry(tmp_path):
    repo = tmp_path / "repo"
    register_project(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(GIT, DVC_NO_ANALYTICS="1", DINOFLOW_STATE_DIR=str(tmp_path / "state"))
    env["PATH"] = f"{BIN}:{env['PATH']}"
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"]):
        sh(cmd, repo, env)
    sh(["git", "commit", "-qm", "project"], repo, env)

    out = sh([str(BIN / "dvc"), "exp", "run", "--temp"], repo, env)
    store = f"sqlite:///{repo / 'mlflow.db'}"
    assert (repo / "mlflow.db").is_file(), f"nothing registered into the project's store:\n{out[-2000:]}"
    client = mlflow.MlflowClient(store)
    assert str(client.get_model_version_by_alias("dinoflow-student", "champion").version) == "1"

    sh([str(BIN / "dvc"), "exp", "run", "--queue", "-S", "register.champion_tolerance=0.01"], repo, env)
    sh([str(BIN / "dvc"), "exp", "run", "--run-all"], repo, env)
    versions = client.search_model_versions("name = 'dinoflow-student'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"], "the queued experiment registered version 2 here"
    assert not list(repo.joinpath(".dvc", "tmp", "exps").rglob("mlflow.db")), "no store inside a temp workspace"
