"""torchx: the component builds a torchrun AppDef; `torchx run -s local_cwd` runs 2 CPU workers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

torchx = pytest.importorskip("torchx", reason="torchx is the optional extra `dinoflow[torchx]` (torchx-nightly)")

from dinoflow.launch.torchx_components import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_single_node_appdef():
    app = train("-S", "pretrain.train.max_steps=2", stage="pretrain", j="1x2")
    (role,) = app.roles
    script = role.args[1]
    assert role.entrypoint == "bash" and role.num_replicas == 1
    assert "--nproc_per_node 2" in script and "--rdzv_endpoint localhost:0" in script
    assert script.endswith("-m dinoflow pretrain -c params.yaml -S pretrain.train.max_steps=2")


def test_multi_node_appdef_rendezvous_on_rank0():
    app = train(stage="distill", j="2x8", gpu=8)
    (role,) = app.roles
    assert role.num_replicas == 2 and role.resource.gpu == 8 and role.port_map == {"c10d": 29500}
    assert "$${rank0_env}" not in role.args[1] and "${rank0_env}" in role.args[1]  # torchx fills the macro
    with pytest.raises(ValueError, match="NODESxPROCS"):
        train(j="2")
    with pytest.raises(ValueError, match="pretrain or distill"):
        train(stage="curate")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("dinoflow.train.pretrain") is None,
                    reason="the training loop (src/dinoflow/train/pretrain.py) is not written yet")
def test_torchx_local_cwd_runs_two_cpu_workers(tmp_path, monkeypatch):
    """`torchx run -s local_cwd` → torchrun with 2 workers → `python -m dinoflow pretrain` for 2 steps."""
    from dinoflow.config import load_config
    from dinoflow.stages import run_stage

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "params.yaml")
    if not (Path(cfg.demo.out_dir) / "ground_truth.json").exists():
        run_stage("demo-data", cfg)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    overrides = ["pretrain.data=data/demo/pool", "pretrain.train.max_steps=2", "pretrain.train.batch_size_per_rank=16",
                 "pretrain.train.device=cpu", "pretrain.train.progress=false", "pretrain.out_dir=models/teacher"]
    cmd = [str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd",
           "dinoflow.launch.torchx_components:train", "--stage", "pretrain", "-j", "1x2",
           "--config", str(ROOT / "params.yaml"), "--"]
    for o in overrides:
        cmd.append(f"--set={o}")  # torchx rejects a repeated `-S` token, even after `--`
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "models" / "teacher" / "backbone.pth").exists()
