"""Checkpoints are read without running code from them: a crafted `.metadata` or non-tensor entry
is refused with a CheckpointError (no file appears), and an honest checkpoint still round-trips."""

from __future__ import annotations

import enum
import io
import json
import os
import pickle
import shutil
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from dinoflow.train.checkpoint import latest_checkpoint, load_checkpoint, start_save
from dinoflow.train.checkpoint_digests import complete_digests, digest
from dinoflow.train.safe_dcp import CheckpointError

from .conftest import ckpt_dir, cli_overrides, run_cli


class Touch:
    """Unpickling this runs `touch <path>` (what the reported exploit did)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(5, 3)).sum().backward()
    opt.step()
    return m, opt


def _save(tmp_path):
    m, opt = _model()
    path = start_save(
        tmp_path / "ck",
        3,
        modules={"student": m},
        train_module=m,
        optimizer=opt,
        extra={"center": torch.arange(2.0)},
        meta={"loss": 1.5},
        is_main=True,
        asynchronous=False,
    ).finish()
    return path, m, opt


def _load(path, m, opt, center):
    return load_checkpoint(path, modules={"student": m}, train_module=m, optimizer=opt, extra={"center": center})


def test_honest_checkpoint_round_trips(tmp_path):
    path, m, opt = _save(tmp_path)
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    center = torch.zeros(2)
    meta = _load(path, fresh, fresh_opt, center)
    assert meta["step"] == 3 and meta["loss"] == 1.5 and latest_checkpoint(tmp_path / "ck") == path
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    assert torch.equal(center, torch.arange(2.0)) and fresh_opt.param_groups[0]["lr"] == 0.1


def test_crafted_metadata_runs_no_code(tmp_path):
    path, m, opt = _save(tmp_path)
    marker = tmp_path / "PWNED"
    (path / ".metadata").write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata refers to posix\.system.*refusing to load it"):
        _load(path, m, opt, torch.zeros(2))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_crafted_non_tensor_entry_runs_no_code(tmp_path):
    m, opt = _model()
    marker = tmp_path / "PWNED"
    state = {
        "student": get_model_state_dict(m),
        "optim": get_optimizer_state_dict(m, opt),
        "objective": {"center": torch.zeros(2)},
    }
    state["optim"]["param_groups"][0]["lr"] = Touch(marker)  # DCP stores it as a pickled byte entry
    dcp.save(state, checkpoint_id=str(tmp_path / "ck"))
    # checksums that match: the forger wrote them too, so only the safe reader stands in the way
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({"files": complete_digests(tmp_path / "ck", {})}))
    with pytest.raises(CheckpointError, match=r"entry 'optim.param_groups.0.lr' is not plain data"):
        _load(tmp_path / "ck", m, opt, torch.zeros(2))
    assert not marker.exists()


class _EnumByName(pickle.Pickler):
    """Pickles Enum members as Python 3.11.2 does (`getattr(EnumClass, name)`), whatever runs the test."""

    def reducer_override(self, obj):
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def _repickle(path, md, reduce_enums_by_name=True):
    """Rewrite `.metadata` as another writer would have, and record its checksum as that writer did."""
    buf = io.BytesIO()
    (_EnumByName(buf) if reduce_enums_by_name else pickle.Pickler(buf)).dump(md)
    (path / ".metadata").write_bytes(buf.getvalue())
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][".metadata"] = digest(path / ".metadata")
    (path / "meta.json").write_text(json.dumps(meta))


def test_metadata_written_by_a_python_that_pickles_enums_by_name_resumes(tmp_path):
    """A checkpoint saved in the image's Debian Python 3.11.2 (enum members as getattr calls) resumes."""
    path, m, opt = _save(tmp_path)
    md = pickle.loads((path / ".metadata").read_bytes())
    _repickle(path, md)
    assert b"getattr" in (path / ".metadata").read_bytes()
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    assert _load(path, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.5), torch.zeros(2))["step"] == 3
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())


def test_metadata_getattr_other_than_an_enum_member_is_refused(tmp_path):
    path, m, opt = _save(tmp_path)
    md = pickle.loads((path / ".metadata").read_bytes())
    md.storage_meta = Getattr(Metadata, "__init__")  # an attribute of an allowed class, not an enum member
    _repickle(path, md, reduce_enums_by_name=False)
    with pytest.raises(CheckpointError, match=r"calls getattr\(Metadata, '__init__'\).*refusing to load it"):
        _load(path, m, opt, torch.zeros(2))


class Getattr:
    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def test_metadata_naming_a_shard_outside_its_directory_is_refused(tmp_path):
    path, m, opt = _save(tmp_path)
    md = pickle.loads((path / ".metadata").read_bytes())  # our own honest file, to edit
    for info in md.storage_data.values():
        info.relative_path = "../../secret"
    (path / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointError, match="outside its directory"):
        _load(path, m, opt, torch.zeros(2))


def test_latest_must_name_a_step_directory(tmp_path):
    _save(tmp_path)
    (tmp_path / "ck" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(CheckpointError, match="not a step_<N> checkpoint"):
        latest_checkpoint(tmp_path / "ck")


@pytest.mark.slow
def test_pretrain_refuses_a_crafted_checkpoint_directory(tmp_path, image_folder):
    """The reported exploit end to end: `dinoflow pretrain` resuming from a run directory whose
    `.metadata` was replaced ends with a named error, and the command in it never runs."""
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=2")
    assert run_cli(["pretrain", *ov], cwd=tmp_path).returncode == 0
    step_dir = ckpt_dir(tmp_path / "teacher") / "step_00000002"
    marker = tmp_path / "PWNED"
    (step_dir / ".metadata").write_bytes(pickle.dumps(Touch(marker)))
    r = run_cli(["pretrain", *cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=3")], cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "refers to posix.system" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not marker.exists()
    shutil.rmtree(tmp_path / "teacher")


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", ["true", "false"])
def test_a_full_disk_under_the_checkpoint_dir_names_the_checkpoint(tmp_path, image_folder, asynchronous):
    """Checkpoints on their own (full) volume, exports elsewhere: the message names the checkpoint, not
    the out_dir or the working directory (a real full tmpfs, in a mount namespace)."""
    from fs_sandbox import run_on_tmpfs

    full = tmp_path / "ckpt_volume"
    ov = cli_overrides(
        tmp_path, image_folder, "pretrain.train.max_steps=2", f"pretrain.train.checkpoint_dir={full}",
        f"pretrain.train.async_checkpoint={asynchronous}",
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = run_on_tmpfs([sys.executable, "-m", "dinoflow", "pretrain", *ov], full, size="256k", timeout=300, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dinoflow pretrain: no space left on the device holding {full}/pretrain-"), last
    assert "/step_00000002" in last and "Traceback" not in r.stderr, r.stderr[-3000:]
