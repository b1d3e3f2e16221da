"""SIGTERM is honoured within seconds wherever training is (here: waiting for a slow batch), the
stage exits non-zero, and what is saved resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from .conftest import cli_overrides

pytestmark = pytest.mark.slow


def _slow_folder(root, n=8, side=2000):
    """Big smooth PNGs: each takes ~0.1 s to decode and shrink to 28 px, so a batch of 256 takes
    tens of seconds to load."""
    root.mkdir(parents=True)
    y, x = np.mgrid[:side, :side]
    for i in range(n):
        arr = np.stack([(x * 255 // side), (y * 255 // side), ((x + y + i * 97) * 127 // side) % 256], -1)
        Image.fromarray(arr.astype(np.uint8)).save(root / f"big_{i}.png")
    return root


def test_sigterm_while_loading_data_stops_within_seconds(tmp_path):
    data = _slow_folder(tmp_path / "big")
    ov = cli_overrides(tmp_path, data, "pretrain.train.batch_size_per_rank=256", "pretrain.train.max_steps=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinoflow", "pretrain", *ov],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "teacher" / "train_config.yaml").exists() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(5.0)  # the model is built (imports take a few seconds) and the first batch is loading
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1 and "stopped by SIGTERM at step 0" in err, err[-3000:]
    assert "no checkpoint was written yet" in err
    assert took < 5, f"took {took:.1f} s to stop"
