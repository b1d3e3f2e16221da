"""Asynchronous checkpoints: the state is taken when the save starts (training may change the
tensors right after), nothing is published until the write is complete, and two gloo processes
save in the background while they keep running collectives."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from dinoflow.train.checkpoint import latest_checkpoint, load_checkpoint, start_save

from .ckpt_helpers import run_two_ranks, small_parts


def _save_mutate_finish(tmp, rank_main: bool = True) -> dict:
    net, opt = small_parts()
    centre = torch.ones(5)
    want = {k: v.clone() for k, v in net.state_dict().items()}
    pending = start_save(
        tmp / "ckpt",
        7,
        modules={"student": net},
        train_module=net,
        optimizer=opt,
        extra={"centre": centre},
        meta={"note": "x"},
        is_main=rank_main,
        asynchronous=True,
    )
    assert latest_checkpoint(tmp / "ckpt") is None  # not published while in flight
    with torch.no_grad():  # the training goes on and changes everything in place
        for p in net.parameters():
            p.add_(100.0)
        centre.mul_(3)
    if dist.is_initialized():
        dist.all_reduce(torch.ones(1))  # the training's own collectives meanwhile
    final = pending.finish()
    assert latest_checkpoint(tmp / "ckpt") == final
    return want


def test_async_save_keeps_the_state_of_its_step(tmp_path):
    want = _save_mutate_finish(tmp_path)
    net, opt = small_parts(seed=1)
    centre = torch.zeros(5)
    meta = load_checkpoint(
        latest_checkpoint(tmp_path / "ckpt"),
        modules={"student": net},
        train_module=net,
        optimizer=opt,
        extra={"centre": centre},
    )
    assert meta["step"] == 7 and meta["note"] == "x"
    assert all(torch.equal(net.state_dict()[k], v) for k, v in want.items())
    assert torch.equal(centre, torch.ones(5))


def _worker(rank: int, port: int, tmp: str) -> None:
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        _save_mutate_finish(Path(tmp), rank_main=rank == 0)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_save_in_the_background(tmp_path):
    run_two_ranks(_worker, str(tmp_path))
    net, opt = small_parts(seed=1)
    load_checkpoint(
        latest_checkpoint(tmp_path / "ckpt"),
        modules={"student": net},
        train_module=net,
        optimizer=opt,
        extra={"centre": torch.zeros(5)},
    )
    want, _ = small_parts()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in want.state_dict().items())
