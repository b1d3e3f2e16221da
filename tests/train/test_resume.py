"""Exact resume: N steps straight == steps interrupted by SIGTERM + resume (bitwise), and a
checkpoint written by 2 torchrun processes resumes in 1. Real subprocesses, real signals."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import cli_overrides, run_cli, state_equal

pytestmark = pytest.mark.slow
N = 8


def _teacher(tmp):
    return torch.load(tmp / "teacher" / "backbone.pth", weights_only=True)


def _rows(tmp):
    p = tmp / "pretrain.csv"
    return list(csv.DictReader(p.open())) if p.exists() else []


def test_sigterm_then_resume_is_bitwise_identical(tmp_path, image_folder):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    args = ["pretrain"]
    r = run_cli(args + cli_overrides(straight, image_folder, f"pretrain.train.max_steps={N}"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    ov = cli_overrides(interrupted, image_folder, f"pretrain.train.max_steps={N}", "pretrain.train.checkpoint_every=100")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dinoflow", *args, *ov], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_rows(interrupted)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped_at = len(_rows(interrupted))
    assert '"status": "preempted"' in out and 2 <= stopped_at < N, (stopped_at, out[-500:])
    assert (interrupted / "teacher" / "ckpt" / "latest").read_text().strip() == f"step_{stopped_at:08d}"

    r = run_cli(args + ov, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [int(x["step"]) for x in _rows(interrupted)] == list(range(1, N + 1))
    assert state_equal(_teacher(straight), _teacher(interrupted))
    a, b = _rows(straight), _rows(interrupted)
    assert [x["loss"] for x in a] == [x["loss"] for x in b]


def test_torchrun_two_processes_then_resume_in_one(tmp_path, image_folder):
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=3", "pretrain.train.checkpoint_every=3")
    r = run_cli(["pretrain", *ov], cwd=tmp_path, torchrun=2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "teacher" / "ckpt" / "step_00000003").is_dir()
    assert '"world_size": 2' in r.stdout
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=5")
    r = run_cli(["pretrain", *ov], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert '"world_size": 1' in r.stdout and '"step": 5' in r.stdout
    assert [int(x["step"]) for x in _rows(tmp_path)] == [1, 2, 3, 4, 5]


def test_fsdp_two_processes_then_resume_in_one(tmp_path, image_folder):
    """FSDP2 (fully_shard) on 2 gloo processes: trains, checkpoints shards with DCP, exports a
    full backbone; the sharded checkpoint resumes in a single unsharded process."""
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=3", "pretrain.train.checkpoint_every=3",
                       "pretrain.train.strategy=fsdp")
    r = run_cli(["pretrain", *ov], cwd=tmp_path, torchrun=2)
    assert r.returncode == 0, r.stderr[-4000:]
    sd = _teacher(tmp_path)
    assert sd["cls_token"].shape == (1, 1, 64)  # gathered, not a shard
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=4")
    r = run_cli(["pretrain", *ov], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert '"world_size": 1' in r.stdout and '"step": 4' in r.stdout
    resumed = _teacher(tmp_path)
    assert any(not torch.equal(sd[k], resumed[k]) for k in sd)  # it kept training from the shards


def test_fsdp_with_block_chunks_trains_and_resumes(tmp_path, image_folder):
    """Regression: with `block_chunks > 0` FSDP sharded the chunk containers, which the forward
    never calls, and crashed at the first forward on still-sharded weights. Two processes train
    with the chunked layout, checkpoint, and two processes resume from the shards."""
    chunked = ["pretrain.model.block_chunks=3", "pretrain.train.strategy=fsdp"]
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=2", "pretrain.train.checkpoint_every=2", *chunked)
    r = run_cli(["pretrain", *ov], cwd=tmp_path, torchrun=2)
    assert r.returncode == 0, r.stderr[-4000:]
    first = _teacher(tmp_path)
    assert first["blocks.0.attn.qkv.weight"].shape == (192, 64)  # exported in the flat official layout
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=4", *chunked)
    r = run_cli(["pretrain", *ov], cwd=tmp_path, torchrun=2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert '"step": 4' in r.stdout
    assert [int(x["step"]) for x in _rows(tmp_path)] == [1, 2, 3, 4]
    assert any(not torch.equal(first[k], v) for k, v in _teacher(tmp_path).items())
