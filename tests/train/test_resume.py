"""Exact resume: N steps straight == steps interrupted by SIGTERM or kill -9 + resume (bitwise),
on a tiny config and on the demo settings (params.yaml, both teacher normalisations); a
checkpoint written by 2 torchrun processes resumes in 1. Real subprocesses, real signals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ckpt_dir, cli_overrides, run_cli, state_equal

pytestmark = pytest.mark.slow
N = 8
ROOT = Path(__file__).resolve().parents[2]


def _teacher(tmp):
    return torch.load(tmp / "teacher" / "backbone.pth", weights_only=True)


def _rows(tmp):
    p = tmp / "pretrain.csv"
    return list(csv.DictReader(p.open())) if p.exists() else []


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def _interrupt(
    args: list[str], run_dir: Path, sig: int, after_rows: int, cwd: Path, published: Path | None = None
) -> tuple[int, str, int]:
    """Start `python -m dinoflow *args`, send `sig` once the CSV has `after_rows` rows (and, with
    `published`, once a checkpoint directory under that root names a published checkpoint: they are
    written in the background); (rc, stderr, rows)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinoflow", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240

    def ready() -> bool:
        return len(_rows(run_dir)) >= after_rows and (published is None or any(published.glob("*/latest")))

    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err, len(_rows(run_dir))


def test_sigterm_then_resume_is_bitwise_identical(tmp_path, image_folder):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    args = ["pretrain"]
    r = run_cli(args + cli_overrides(straight, image_folder, f"pretrain.train.max_steps={N}"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    ov = cli_overrides(
        interrupted, image_folder, f"pretrain.train.max_steps={N}", "pretrain.train.checkpoint_every=100"
    )
    rc, err, stopped_at = _interrupt(args + ov, interrupted, signal.SIGTERM, 2, tmp_path)
    assert rc == 1 and "stopped by SIGTERM" in err, err[-3000:]  # not finished: non-zero, so no runner records it done
    assert 2 <= stopped_at < N, stopped_at
    assert (ckpt_dir(interrupted / "teacher") / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert not (interrupted / "teacher" / "backbone.pth").exists()

    r = run_cli(args + ov, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(r.stdout)["resumed_from"] == stopped_at
    assert [int(x["step"]) for x in _rows(interrupted)] == list(range(1, N + 1))
    assert state_equal(_teacher(straight), _teacher(interrupted))
    a, b = _rows(straight), _rows(interrupted)
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    assert not (interrupted / "teacher" / "ckpt").exists() or not any((interrupted / "teacher" / "ckpt").iterdir()), (
        "a run that completed its schedule keeps no checkpoint"
    )


# ---------------------------------------------------------------- the demo settings (params.yaml)

DEMO_STEPS, DEMO_EVERY = 6, 3  # kill -9 lands after the checkpoint at step 3


def _demo_args(run_dir: Path, data: Path, centering: str) -> list[str]:
    ov = [
        "tracking.enabled=false",
        f"pretrain.data={data}",
        f"pretrain.out_dir={run_dir / 'teacher'}",
        f"pretrain.report_csv={run_dir / 'pretrain.csv'}",
        f"pretrain.train.checkpoint_dir={run_dir / 'ckpt'}",
        "pretrain.train.progress=false",
        "pretrain.train.log_every=1",
        f"pretrain.train.max_steps={DEMO_STEPS}",
        f"pretrain.train.checkpoint_every={DEMO_EVERY}",
        f"pretrain.loss.centering={centering}",
    ]
    return ["pretrain", "-c", str(ROOT / "params.yaml")] + [a for o in ov for a in ("-S", o)]


@pytest.fixture(scope="module")
def demo_straight(tmp_path_factory, image_folder):
    """The uninterrupted demo-settings run, once per centering."""
    runs: dict[str, Path] = {}

    def get(centering: str) -> Path:
        if centering not in runs:
            d = tmp_path_factory.mktemp(f"straight-{centering}")
            r = run_cli(_demo_args(d, image_folder, centering), cwd=d)
            assert r.returncode == 0, r.stderr[-3000:]
            runs[centering] = d
        return runs[centering]

    return get


@pytest.mark.parametrize("centering", ["softmax", "sinkhorn_knopp"])
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_demo_settings_resume_is_bitwise_identical(tmp_path, image_folder, demo_straight, centering, how):
    """vit_mini, batch 64, BatchNorm heads, the demo's loss and optimiser: losses and teacher
    weights after an interruption + resume equal the uninterrupted run's bit for bit."""
    straight = demo_straight(centering)
    args = _demo_args(tmp_path, image_folder, centering)
    if how == "SIGTERM":  # checkpoints the step it stops at and exits non-zero
        rc, err, stopped_at = _interrupt(args, tmp_path, signal.SIGTERM, 1, tmp_path)
        assert rc == 1 and "stopped by SIGTERM" in err, err[-3000:]
        resume_at = stopped_at
    else:  # nothing saved at the kill: the resume starts from the periodic checkpoint
        rc, err, stopped_at = _interrupt(
            args, tmp_path, signal.SIGKILL, DEMO_EVERY + 1, tmp_path, published=tmp_path / "ckpt"
        )
        assert rc == -signal.SIGKILL, err[-3000:]
        (latest,) = (tmp_path / "ckpt").glob("*/latest")
        resume_at = int(latest.read_text().strip().removeprefix("step_"))
    assert 1 <= resume_at < DEMO_STEPS and stopped_at < DEMO_STEPS

    r = run_cli(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(r.stdout)["resumed_from"] == resume_at
    a, b = _rows(straight), _rows(tmp_path)
    assert [int(x["step"]) for x in b] == list(range(1, DEMO_STEPS + 1))
    differing = [x["step"] for x, y in zip(a, b) if x["loss"] != y["loss"]]
    assert not differing, f"losses differ from step {differing[0]} on (resumed at {resume_at})"
    assert state_equal(_teacher(straight), _teacher(tmp_path))


# ---------------------------------------------------------------- other world sizes


def test_torchrun_two_processes_then_resume_in_one(tmp_path, image_folder):
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=3", "pretrain.train.checkpoint_every=3")
    r = run_cli(["pretrain", *ov], cwd=tmp_path, torchrun=2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (ckpt_dir(tmp_path / "teacher") / "step_00000003").is_dir()
    assert '"world_size": 2' in r.stdout
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=5")
    r = run_cli(["pretrain", *ov], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert '"world_size": 1' in r.stdout and '"step": 5' in r.stdout
    assert [int(x["step"]) for x in _rows(tmp_path)] == [1, 2, 3, 4, 5]


def test_fsdp_two_processes_then_resume_in_one(tmp_path, image_folder):
    """FSDP2 (fully_shard) on 2 gloo processes: trains, checkpoints shards with DCP, exports a
    full backbone; the sharded checkpoint resumes in a single unsharded process."""
    ov = cli_overrides(
        tmp_path,
        image_folder,
        "pretrain.train.max_steps=3",
        "pretrain.train.checkpoint_every=3",
        "pretrain.train.strategy=fsdp",
    )
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
    ov = cli_overrides(
        tmp_path, image_folder, "pretrain.train.max_steps=2", "pretrain.train.checkpoint_every=2", *chunked
    )
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
