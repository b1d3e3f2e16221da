"""A batch that cannot fit in memory is refused up front, naming the key, before any data is read."""

from __future__ import annotations

import time

import pytest
import torch

from dinoflow.errors import DinoflowError
from dinoflow.train.resources import available_bytes, bytes_per_image, check_batch_fits

from .conftest import cli_overrides, run_cli


def test_estimate_grows_with_the_model_and_the_crops(tiny_cfg):
    pc = tiny_cfg().pretrain
    small = bytes_per_image(pc.model, pc.crops, 28)
    assert small > 0
    assert bytes_per_image(pc.model.model_copy(update={"arch": "vit_small"}), pc.crops, 28) > small
    assert bytes_per_image(pc.model, pc.crops.model_copy(update={"n_local": 8}), 28) > small
    assert bytes_per_image(pc.model, pc.crops.model_copy(update={"n_global": 1}), 28) < small


def test_huge_batch_is_refused_and_a_normal_one_passes(tiny_cfg):
    pc = tiny_cfg().pretrain
    assert available_bytes(torch.device("cpu")) > 0
    check_batch_fits("pretrain.train.batch_size_per_rank", 64, pc.model, pc.crops, 28, torch.device("cpu"))
    with pytest.raises(
        DinoflowError,
        match=r"pretrain.train.batch_size_per_rank=100000000 needs at least .* GiB "
        r"per process .* lower pretrain.train.batch_size_per_rank \(at most about \d+",
    ):
        check_batch_fits("pretrain.train.batch_size_per_rank", 10**8, pc.model, pc.crops, 28, torch.device("cpu"))


@pytest.mark.slow
def test_pretrain_with_a_huge_batch_fails_before_any_work(tmp_path, image_folder):
    """The reported case ran 173 s until MemoryError, ignoring SIGTERM; now it is refused at once."""
    t0 = time.monotonic()
    r = run_cli(
        ["pretrain", *cli_overrides(tmp_path, image_folder, "pretrain.train.batch_size_per_rank=100000000")],
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 1 and "pretrain.train.batch_size_per_rank=100000000 needs at least" in r.stderr, r.stderr[
        -3000:
    ]
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "teacher").exists()
