"""A damaged checkpoint is never resumed: a flipped bit or a truncated shard is a CheckpointError
naming the file (nothing is loaded), the message says whether an older checkpoint verifies, and
deleting the damaged one resumes from that older one. Every file is covered, on two ranks too."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist

from dinoflow.train.checkpoint import latest_checkpoint, load_checkpoint, start_save
from dinoflow.train.checkpoint_digests import complete_digests
from dinoflow.train.safe_dcp import CheckpointError

from .ckpt_helpers import run_two_ranks, small_parts
from .conftest import ckpt_dir, cli_overrides, run_cli


def _save(root, step: int, net, opt, asynchronous: bool = False, is_main: bool = True):
    return start_save(
        root,
        step,
        modules={"student": net},
        train_module=net,
        optimizer=opt,
        extra={"centre": torch.ones(5)},
        meta={"note": "x"},
        is_main=is_main,
        files={"metrics.csv": __file__},
        asynchronous=asynchronous,
    ).finish()


def _load(path, net, opt):
    return load_checkpoint(path, modules={"student": net}, train_module=net, optimizer=opt, extra={})


def _flip_bit(path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _records_every_file(ckpt) -> None:
    files = json.loads((ckpt / "meta.json").read_text())["files"]
    on_disk = {p.name for p in ckpt.iterdir()} - {"meta.json"}
    assert set(files) == on_disk and {".metadata", "metrics.csv"} <= on_disk
    assert all(len(d["sha256"]) == 64 and d["bytes"] == (ckpt / n).stat().st_size for n, d in files.items())


@pytest.mark.parametrize("asynchronous", [False, True])
def test_every_file_is_recorded_when_saved(tmp_path, asynchronous):
    net, opt = small_parts()
    _records_every_file(_save(tmp_path / "ck", 4, net, opt, asynchronous=asynchronous))


def test_a_flipped_bit_in_a_shard_is_named_and_nothing_is_loaded(tmp_path):
    net, opt = small_parts()
    ck = _save(tmp_path / "ck", 4, net, opt)
    shard = ck / "__0_0.distcp"
    _flip_bit(shard, shard.stat().st_size // 2)  # inside the tensor bytes: DCP alone would load it
    fresh, fresh_opt = small_parts(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"{shard} does not match its sha256 recorded when it was written") as e:
        _load(ck, fresh, fresh_opt)
    assert "no older checkpoint of this run verifies" in str(e.value) and "train.restart=true" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_a_truncated_shard_is_named(tmp_path):
    net, opt = small_parts()
    ck = _save(tmp_path / "ck", 4, net, opt)
    shard = ck / "__0_0.distcp"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 3)
    with pytest.raises(CheckpointError, match=rf"{shard} has {size // 3} bytes, {size} when written"):
        _load(ck, *small_parts(seed=1))


def test_a_damaged_latest_names_the_older_one_that_verifies_and_deleting_it_resumes_from_that(tmp_path):
    net, opt = small_parts()
    older = _save(tmp_path / "ck", 2, net, opt)
    want = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    newer = _save(tmp_path / "ck", 4, net, opt)
    _flip_bit(newer / "metrics.csv", 0)  # any file, not only the shards
    (newer / "extra.bin").write_bytes(b"planted")  # and a file no save wrote
    with pytest.raises(CheckpointError) as e:
        _load(newer, *small_parts(seed=1))
    msg = str(e.value)
    assert f"{newer}/extra.bin is not recorded in meta.json" in msg
    assert f"{newer}/metrics.csv does not match its sha256" in msg
    assert f"the previous checkpoint {older} verifies: delete {newer} and rerun to resume from it" in msg
    for p in newer.iterdir():
        p.unlink()
    newer.rmdir()
    assert latest_checkpoint(tmp_path / "ck") == older  # `latest` still names the deleted one
    fresh, fresh_opt = small_parts(seed=1)
    assert _load(older, fresh, fresh_opt)["step"] == 2
    assert all(torch.equal(want[k], v) for k, v in fresh.state_dict().items())


def test_a_shard_dcp_cannot_read_is_one_named_error_even_with_forged_checksums(tmp_path):
    """Checksums rewritten to match a truncated shard: DCP's own read error becomes one line naming it."""
    net, opt = small_parts()
    ck = _save(tmp_path / "ck", 4, net, opt)
    with open(ck / "__0_0.distcp", "r+b") as f:
        f.truncate(10)
    meta = json.loads((ck / "meta.json").read_text())
    meta["files"] = complete_digests(ck, {})
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"checkpoint {ck} could not be read \(\w+"):
        _load(ck, *small_parts(seed=1))


def test_a_checkpoint_without_checksums_is_refused(tmp_path):
    net, opt = small_parts()
    ck = _save(tmp_path / "ck", 4, net, opt)
    meta = json.loads((ck / "meta.json").read_text())
    del meta["files"]
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no checksums of the checkpoint's files"):
        _load(ck, *small_parts(seed=1))


def _two_rank_worker(rank: int, port: int, tmp: str) -> None:
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    out = Path(tmp) / f"rank{rank}.txt"
    try:
        net, opt = small_parts()
        ck = _save(Path(tmp) / "ck", 3, net, opt, asynchronous=True, is_main=rank == 0)
        _load(ck, *small_parts(seed=1))  # verified in shares, loaded
        if rank == 0:
            _flip_bit(ck / "__1_0.distcp", 0)  # written by rank 1, verified by whichever rank has its share
        dist.barrier()
        try:
            _load(ck, *small_parts(seed=1))
            out.write_text("loaded")
        except CheckpointError as e:
            out.write_text(str(e))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_record_every_shard_and_both_name_a_damaged_one(tmp_path):
    run_two_ranks(_two_rank_worker, str(tmp_path))
    ck = latest_checkpoint(tmp_path / "ck")
    _records_every_file(ck)
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(json.loads((ck / "meta.json").read_text())["files"])
    for rank in range(2):
        assert f"{ck / '__1_0.distcp'} does not match its sha256" in (tmp_path / f"rank{rank}.txt").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped_bit", "truncated"])
def test_pretrain_resuming_a_damaged_shard_stops_with_a_named_error(tmp_path, image_folder, damage):
    """The reported cases end to end: `__0_0.distcp` with a bit flipped (resumed with exit 0 and changed
    weights) or truncated (a 78-line traceback), then `dinoflow pretrain` resumes."""
    ov = cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=2")
    assert run_cli(["pretrain", *ov], cwd=tmp_path).returncode == 0
    shard = ckpt_dir(tmp_path / "teacher") / "step_00000002" / "__0_0.distcp"
    size = shard.stat().st_size
    if damage == "flipped_bit":
        _flip_bit(shard, size - 100)
        expect = f"{shard} does not match its sha256"
    else:
        with open(shard, "r+b") as f:
            f.truncate(size // 2)
        expect = f"{shard} has {size // 2} bytes, {size} when written"
    r = run_cli(["pretrain", *cli_overrides(tmp_path, image_folder, "pretrain.train.max_steps=3")], cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr[-3000:]
