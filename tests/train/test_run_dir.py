"""A run directory refuses changed settings unless told to start over, never resumes a checkpoint
made with other settings, and a run keyed by its settings leaves others' checkpoints alone."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from dinoflow.errors import DinoflowError
from dinoflow.train.pretrain import pretrain
from dinoflow.train.run_dir import settings_hash, training_settings

from .conftest import ckpt_dir, state_equal, tiny_overrides


def _backbone(tmp):
    return torch.load(tmp / "teacher" / "backbone.pth", weights_only=True)


def test_changed_settings_are_refused_naming_the_keys(tiny_cfg, tmp_path):
    first = pretrain(tiny_cfg("pretrain.train.max_steps=2"))
    assert first["status"] == "finished" and math.isfinite(first["final_loss"])
    weights = _backbone(tmp_path)
    recorded = (tmp_path / "teacher" / "train_config.yaml").read_text()

    changed = tiny_cfg(
        "pretrain.train.max_steps=2", "pretrain.optim.base_lr=0.02", "pretrain.loss.koleo_weight=0.5", "pretrain.seed=1"
    )
    with pytest.raises(DinoflowError) as e:
        pretrain(changed)
    msg = str(e.value)
    for key in (
        "pretrain.optim.base_lr 0.01 -> 0.02",
        "pretrain.loss.koleo_weight 0.1 -> 0.5",
        "pretrain.seed 0 -> 1",
        "pretrain.train.restart=true",
    ):
        assert key in msg, msg
    # nothing was touched: the old weights and the record of how they were trained stay together
    assert state_equal(weights, _backbone(tmp_path))
    assert (tmp_path / "teacher" / "train_config.yaml").read_text() == recorded


def test_restart_starts_over_with_the_new_settings(tiny_cfg, tmp_path):
    pretrain(tiny_cfg("pretrain.train.max_steps=2"))
    old_ckpt = ckpt_dir(tmp_path / "teacher")
    weights = _backbone(tmp_path)
    out = pretrain(tiny_cfg("pretrain.train.max_steps=2", "pretrain.optim.base_lr=0.02", "pretrain.train.restart=true"))
    assert out["resumed_from"] == 0 and out["step"] == 2 and math.isfinite(out["final_loss"])
    assert not old_ckpt.exists(), "restart drops the checkpoints of the settings it replaces"
    recorded = yaml.safe_load((tmp_path / "teacher" / "train_config.yaml").read_text())
    assert recorded["optim"]["base_lr"] == 0.02
    assert not state_equal(weights, _backbone(tmp_path))


def test_runtime_keys_resume_and_a_finished_rerun_reports_its_loss(tiny_cfg, tmp_path):
    a = pretrain(tiny_cfg("pretrain.train.max_steps=2"))
    # how far to run, how often to log or save, and where files go are not training settings
    b = pretrain(
        tiny_cfg("pretrain.train.max_steps=3", "pretrain.train.checkpoint_every=1", "pretrain.train.log_every=2")
    )
    assert b["resumed_from"] == 2 and b["step"] == 3
    again = pretrain(tiny_cfg("pretrain.train.max_steps=3"))  # nothing left to train: re-export, same loss
    assert again["resumed_from"] == 3 and again["final_loss"] == b["final_loss"] and math.isfinite(a["final_loss"])


def test_a_checkpoint_made_with_other_settings_is_never_resumed(tiny_cfg, tmp_path):
    pretrain(tiny_cfg("pretrain.train.max_steps=2"))
    ck = ckpt_dir(tmp_path / "teacher")
    meta_path = ck / "step_00000002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["optim"]["base_lr"] = 0.5  # e.g. a checkpoint directory copied in from another run
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DinoflowError, match=r"made with other settings: pretrain.optim.base_lr 0.5 -> 0.01"):
        pretrain(tiny_cfg("pretrain.train.max_steps=3"))


def test_checkpoints_are_keyed_by_training_settings_only(tiny_cfg):
    base = tiny_cfg()
    same = tiny_cfg(
        "pretrain.train.max_steps=7",
        "pretrain.out_dir=/elsewhere",
        "pretrain.train.num_workers=2",
        "pretrain.train.checkpoint_dir=/durable",
        "pretrain.train.restart=true",
    )
    other = tiny_cfg("pretrain.optim.base_lr=0.002")
    h = settings_hash("pretrain", training_settings(base.pretrain))
    assert h == settings_hash("pretrain", training_settings(same.pretrain))
    assert h != settings_hash("pretrain", training_settings(other.pretrain))
    assert h != settings_hash("distill", training_settings(base.pretrain))


def test_checkpoint_dir_outside_the_run_directory(tiny_cfg, tmp_path):
    out = pretrain(tiny_cfg("pretrain.train.max_steps=2", f"pretrain.train.checkpoint_dir={tmp_path / 'durable'}"))
    assert out["checkpoint_dir"].startswith(str(tmp_path / "durable" / "pretrain-"))
    assert not (tmp_path / "teacher" / "ckpt").exists()
    # the run directory is deleted (as DVC does before a rerun): the checkpoint still resumes
    import shutil

    shutil.rmtree(tmp_path / "teacher")
    again = pretrain(tiny_cfg("pretrain.train.max_steps=3", f"pretrain.train.checkpoint_dir={tmp_path / 'durable'}"))
    assert again["resumed_from"] == 2 and again["step"] == 3


def test_checkpoint_dir_must_be_a_file_system_path():
    from dinoflow.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"pretrain.train.checkpoint_dir: .*file system path"):
        load_config(None, ["pretrain.train.checkpoint_dir=s3://bucket/ckpt"])


def test_an_unreadable_record_is_refused_and_restart_gets_past_it(tiny_cfg, tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "train_config.yaml").write_text("model: {arch: vit_huge}\n")  # not valid settings
    with pytest.raises(DinoflowError, match=r"train_config.yaml does not hold valid PretrainConfig settings"):
        pretrain(tiny_cfg("pretrain.train.max_steps=1"))
    out = pretrain(tiny_cfg("pretrain.train.max_steps=1", "pretrain.train.restart=true"))
    assert out["step"] == 1 and out["resumed_from"] == 0


def _pretrain_cmd(tmp, data, out: str, *extra: str) -> list[str]:
    ov = tiny_overrides(tmp, data, f"pretrain.train.checkpoint_dir={tmp / 'shared'}", *extra)
    ov += [f"pretrain.out_dir={tmp / out}", f"pretrain.report_csv={tmp / out}.csv"]
    return [sys.executable, "-m", "dinoflow", "pretrain", *[a for o in ov for a in ("-S", o)]]


@pytest.mark.slow
def test_pretrains_sharing_a_checkpoint_dir_one_writes_the_others_are_named(tmp_path, image_folder):
    """The reported case: three pretrains with one checkpoint_dir (they died on a raw FileNotFoundError
    for `.step_N.tmp`). The first holds it; the others stop at once naming it; killed, its lock is taken over."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        _pretrain_cmd(tmp_path, image_folder, "a", "pretrain.train.epochs=400"),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    locks = tmp_path / "shared"
    deadline = time.time() + 120
    while not list(locks.glob("pretrain-*.lock")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()[-3000:]
    others = [
        subprocess.Popen(
            _pretrain_cmd(tmp_path, image_folder, name, "pretrain.train.epochs=400"),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("b", "c")
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in others]
    assert first.poll() is None, "the holder kept training meanwhile"
    first.kill()  # SIGKILL: its lock files stay behind, their kernel locks do not
    first.wait()
    for code, err in results:
        assert code == 1 and "Traceback" not in err, err[-3000:]
        assert f"is being written by dinoflow pretrain (out_dir {tmp_path / 'a'}) (pid {first.pid}" in err, err[-3000:]
        assert "FileNotFoundError" not in err
    assert not (tmp_path / "b" / "backbone.pth").exists() and not (tmp_path / "c" / "backbone.pth").exists()
    r = subprocess.run(
        _pretrain_cmd(tmp_path, image_folder, "b", "pretrain.train.epochs=400", "pretrain.train.max_steps=2"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(locks.glob("*.lock")) and not (tmp_path / "b" / ".dinoflow.lock").exists()
