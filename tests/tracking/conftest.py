import mlflow
import pytest

from dinoflow.config import pipeline_env


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A clean cwd and env: no inherited tracking URI, parent run, pipeline run id or rank; a private
    state directory (the state file never goes into the working directory)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "RANK",
        pipeline_env.PARENT_RUN_ID,
        pipeline_env.PIPELINE_RUN_ID,
        pipeline_env.PIPELINE_RUN_NAME,
        pipeline_env.GIT_COMMIT,
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DINOFLOW_STATE_DIR", str(tmp_path / "state"))
    while mlflow.active_run():
        mlflow.end_run()
    yield cwd
    while mlflow.active_run():
        mlflow.end_run()
