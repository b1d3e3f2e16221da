"""Model sizes known from the settings alone: the counts are exact for every preset, and the stated
bounds refuse an absurd model at config load (exit 2) and beside a weights file, before anything is
allocated; within them, a model larger than the memory left is refused before allocation too.
Peak memory is measured on real subprocesses (their own VmHWM, tests/peak_rss.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from peak_rss import run_measured

from dinoflow.config import ConfigError, HeadConfig, ModelConfig, load_config
from dinoflow.config.model_size import MAX_PARAMS, backbone_params, head_params
from dinoflow.errors import DinoflowError
from dinoflow.models import DINOHead, build_backbone, export_backbone

PEAK_LIMIT_MIB = 1024  # a refused model costs the interpreter and torch, nothing more
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "sqlite:///unused.db"}


def _run(args: list[str], cwd: Path, data_limit: int | None = None) -> tuple[int, str, float]:
    """Run `python args` (with `ulimit -d data_limit`); (exit code, stderr, peak RSS in MiB). The peak
    is the child's own VmHWM: its ru_maxrss would start at the size of the pytest process."""
    m = run_measured(args, cwd, env=ENV, data_limit=data_limit, cwd=cwd)
    return m.returncode, m.stderr, m.peak_mib


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("vit_pico", {"patch_size": 7, "img_size": 28}),
        ("vit_small", {"patch_size": 14, "img_size": 518, "num_register_tokens": 4}),
        ("vit_base", {"patch_size": 16, "img_size": 224, "layerscale_init": None}),
        ("vit_giant2", {"patch_size": 14, "img_size": 224}),
        ("vit_tiny", {"patch_size": 8, "img_size": 64, "ffn_layer": "swiglu"}),
    ],
)
def test_backbone_count_is_exact(arch, kw):
    with torch.device("meta"):
        model = build_backbone(arch, **kw)
    want = sum(p.numel() for p in model.parameters())
    layerscale = kw.get("layerscale_init", 1e-5) is not None
    got = backbone_params(
        arch, kw["patch_size"], kw["img_size"], kw.get("num_register_tokens", 0), kw.get("ffn_layer"), layerscale
    )
    assert got == want


@pytest.mark.parametrize("nlayers", [1, 2, 3, 5])
def test_head_count_is_exact(nlayers):
    head = DINOHead(48, 300, nlayers=nlayers, hidden_dim=40, bottleneck_dim=24)
    assert head_params(48, 300, 40, 24, nlayers) == sum(p.numel() for p in head.parameters())


def test_config_refuses_models_over_the_stated_bounds():
    with pytest.raises(ConfigError, match=r"pretrain\.model: img_size 20006 / patch_size 1 makes a positional"):
        load_config(None, ["pretrain.model={patch_size: 1, img_size: 20006}"])
    with pytest.raises(ConfigError, match=r"distill\.student: .* has [\d,]+ parameters, over the 10,000,000,000"):
        load_config(None, ["distill.student={arch: vit_giant2, patch_size: 4000, img_size: 4000}"])
    with pytest.raises(ConfigError, match=r"head \(out_dim 2400000000.*over the 10,000,000,000"):
        load_config(None, ["pretrain.head.out_dim=2400000000"])
    with pytest.raises(ConfigError, match="head .* parameters, over"):
        load_config(None, ["pretrain.head={hidden_dim: 100000, nlayers: 4}"])
    assert HeadConfig().params(1536) < MAX_PARAMS and ModelConfig(arch="vit_giant2", img_size=518)


def test_a_config_yaml_beside_weights_asking_for_terabytes_is_refused_before_allocation(tmp_path):
    """The reported case: a 46-byte config.yaml beside a backbone.pth asks for a 2.5 TB model."""
    export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28), tmp_path / "m" / "backbone.pth")
    (tmp_path / "m" / "config.yaml").write_text(
        "arch: vit_giant2\npatch_size: 1\nimg_size: 20200"
    )  # 2.5 TB of pos_embed
    assert len((tmp_path / "m" / "config.yaml").read_bytes()) == 46
    code, err, peak = _run(["-c", "from dinoflow.models import load_backbone; load_backbone('m')"], tmp_path)
    assert code == 1 and "config.yaml is not a valid ModelConfig" in err and "408,040,000 patches" in err, err
    assert peak < PEAK_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"


def test_a_model_within_the_bounds_but_over_the_memory_left_is_refused_before_allocation(tmp_path):
    """ViT-g at a 256×256 patch grid (6.1 GiB) in a process limited to 3 GiB of data (`ulimit -d`)."""
    code, err, peak = _run(
        ["-c", "from dinoflow.models import build_backbone; build_backbone('vit_giant2', img_size=3584)"],
        tmp_path,
        data_limit=3 << 30,
    )
    assert code == 1 and "ModelTooLarge: vit_giant2 at img_size 3584, patch_size 14 (65,536 patches" in err, err
    assert "nothing was allocated" in err and peak < PEAK_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"


@pytest.mark.slow
def test_pretrain_refuses_a_training_state_over_the_memory_left_before_reading_data(tmp_path):
    code, err, peak = _run(
        ["-m", "dinoflow", "pretrain", "-S", "pretrain.model={arch: vit_giant2, img_size: 3584}",
         "-S", f"pretrain.data={tmp_path}", "-S", "tracking.enabled=false"],
        tmp_path,
        data_limit=8 << 30,
    )  # fmt: skip
    assert code == 1 and "dinoflow pretrain: training pretrain.model (weights, gradients, optimiser state" in err, err
    assert "Traceback" not in err and peak < PEAK_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"


def test_a_head_over_the_memory_left_is_refused():
    with pytest.raises(DinoflowError, match=r"a DINO head of [\d,]+ parameters \(out_dim 2000000000"):
        DINOHead(64, 2_000_000_000, bottleneck_dim=4096)
