"""The shared-volume layout (dinoflow.launch.shared) and durable checkpoints in every launch mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinoflow.config.pipeline_env import PIPELINE_RUN_ID
from dinoflow.errors import DinoflowError
from dinoflow.launch import shared
from dinoflow.launch.options import LaunchOptions

ROOT = Path(__file__).resolve().parents[2]


def test_layout_is_keyed_by_run_and_stage(tmp_path):
    assert shared.stage_dir(tmp_path, "run-7", "distill") == tmp_path / "run-7" / "distill"
    assert shared.checkpoint_key("distill") == "distill.train.checkpoint_dir"
    assert shared.is_mounted(tmp_path) and not shared.is_mounted(tmp_path / "absent")
    for bad in ("", "../up", "a/b", ".hidden"):
        with pytest.raises(DinoflowError):
            shared.stage_dir(tmp_path, bad, "pretrain")


def test_only_training_stages_wire_checkpoints(tmp_path):
    from dinoflow.launch.steps import step_config

    root = shared.stage_dir(tmp_path, "r", "distill")
    assert shared.checkpoint_wiring("distill", root) == {"distill.train.checkpoint_dir": str(root / "ckpt")}
    assert shared.checkpoint_wiring("curate", shared.stage_dir(tmp_path, "r", "curate")) == {}  # no curate.train
    for stage in ("pretrain", "distill", "curate"):  # what run_training_step wires is a valid config
        step_config("", [], shared.checkpoint_wiring(stage, shared.stage_dir(tmp_path, "r", stage)))


def test_clean_removes_the_stage_and_an_empty_run_dir(tmp_path):
    a, b = shared.stage_dir(tmp_path, "r", "pretrain"), shared.stage_dir(tmp_path, "r", "distill")
    for d in (a, b):
        (d / "ckpt").mkdir(parents=True)
    shared.clean(a)
    assert not a.exists() and b.exists()  # the other stage keeps its checkpoints
    shared.clean(b)
    assert not (tmp_path / "r").exists()


def test_the_run_id_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(PIPELINE_RUN_ID, "kfp-run-1234")
    assert LaunchOptions().run_id == "kfp-run-1234"
    monkeypatch.delenv(PIPELINE_RUN_ID)
    assert LaunchOptions().run_id is None


@pytest.mark.slow
def test_in_process_step_checkpoints_on_the_shared_volume(tmp_path, monkeypatch):
    """One GPU or CPU (in-process): the checkpoints go to <shared>/<run>/<stage>/ckpt, not into the
    pod-local output, and are removed once the step succeeded."""
    from dinoflow.config import load_config
    from dinoflow.launch.training import run_training_step
    from dinoflow.stages import run_stage

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "params.yaml")
    run_stage("demo-data", cfg)
    sh = tmp_path / "shared"
    sh.mkdir()
    out = tmp_path / "artifacts" / "teacher"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_training_step(
        "pretrain",
        (ROOT / "params.yaml").read_text(),
        [
            "pretrain.train.max_steps=2",
            "pretrain.train.checkpoint_every=1",
            "pretrain.train.device=cpu",
            "pretrain.train.progress=false",
            "pretrain.train.batch_size_per_rank=8",
        ],
        inputs={"pretrain.data": str(tmp_path / cfg.demo.out_dir / "pool")},
        outputs={"pretrain.out_dir": str(out), "pretrain.report_csv": str(tmp_path / "artifacts" / "curve.csv")},
        opts=LaunchOptions(shared_dir=str(sh), run_id="run-9"),
    )
    assert (out / "backbone.pth").exists() and not (out / "ckpt").exists()
    assert list(sh.iterdir()) == []


def _as_uid(uid: int) -> list[str]:
    """Run a command as `uid` (the images' user): setpriv when we are root, else as ourselves."""
    import os

    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if os.getuid() == 0 else []


def test_a_root_owned_volume_fails_a_step_at_its_start_and_names_the_preparation_job():
    """A fresh RWX volume: root-owned 0755. The step's user (10001; ourselves when not root, with
    the directory made read-only) gets a named error that says how to prepare it."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="dinoflow-vol-", dir="/tmp"))  # the mount point's parents are traversable
    top.chmod(0o755)
    vol = top / "vol"
    vol.mkdir(mode=0o755)
    if os.getuid() != 0:
        vol.chmod(0o555)
    # any step, before its stage runs: run_step checks the volume every step pod mounts
    code = (
        "import sys; from dinoflow.launch import shared, steps; shared.SHARED_DIR = sys.argv[1]\n"
        "steps.run_stage = lambda *a: sys.exit('the stage ran')\n"
        "steps.run_step('evaluate', '')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "KFP_POD_NAME": "p", "KFP_POD_UID": "u"}
    try:
        out = subprocess.run(
            [*_as_uid(10001), sys.executable, "-c", code, str(vol)], capture_output=True, text=True, env=env
        )
    finally:
        vol.chmod(0o755)
        shutil.rmtree(top)
    assert out.returncode != 0 and "the stage ran" not in out.stderr
    assert "not writable by uid" in out.stderr and "dinoflow-prepare-shared-volume" in out.stderr, out.stderr
