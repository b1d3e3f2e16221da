"""Tiny training configs and a small image folder (MNIST digits from the packaged demo data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoflow.config import load_config

TINY = [
    "tracking.enabled=false",
    "pretrain.model={arch: vit_pico, patch_size: 7, img_size: 28, layerscale_init: 0.1}",
    "pretrain.head={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16}",
    "pretrain.crops={global_size: 28, local_size: 14, n_local: 2}",
    "pretrain.optim={base_lr: 0.01, warmup_epochs: 1, freeze_last_layer_epochs: 0}",
    "pretrain.train={epochs: 2, epoch_length: 4, batch_size_per_rank: 8, checkpoint_every: 2, progress: false, log_every: 1}",
    "pretrain.loss={warmup_teacher_temp_epochs: 1}",
]


def write_image_folder(root: Path, n: int = 96) -> Path:
    from dinoflow.demo.sources import mnist_split

    x, _, _, _ = mnist_split()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(x[i]).save(root / f"img_{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "pool")


def tiny_overrides(tmp: Path, data: Path, *extra: str) -> list[str]:
    return TINY + [
        f"pretrain.data={data}",
        f"pretrain.out_dir={tmp / 'teacher'}",
        f"pretrain.report_csv={tmp / 'pretrain.csv'}",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(tmp_path, image_folder):
    def make(*extra: str):
        return load_config(None, tiny_overrides(tmp_path, image_folder, *extra))

    return make


def ckpt_dir(out_dir: Path, stage: str = "pretrain") -> Path:
    """The one settings-keyed checkpoint directory under `<out_dir>/ckpt` (the default location)."""
    found = sorted((out_dir / "ckpt").glob(f"{stage}-*"))
    assert len(found) == 1, found
    return found[0]


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 300, torchrun: int = 0):
    """Run `python -m dinoflow ...` (or under torchrun) as a real subprocess."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={torchrun}",
            "--standalone",
            "-m",
            "dinoflow",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "dinoflow", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def cli_overrides(tmp: Path, data: Path, *extra: str) -> list[str]:
    out: list[str] = []
    for ov in tiny_overrides(tmp, data, *extra):
        out += ["-S", ov]
    return out
