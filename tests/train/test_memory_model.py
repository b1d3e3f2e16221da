"""The step's memory model against what a CPU forward really keeps, and the checkpointing choice."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from dinoflow.config import CropConfig, HeadConfig
from dinoflow.models import build_backbone, heads_from_config
from dinoflow.train.memory_model import activation_bytes, choose_checkpointing, step_bytes, step_tokens
from dinoflow.train.ssl_net import SSLNet


def _held_after_forward(fn) -> int:
    """Bytes allocated by fn() and still held when it returns (the profiler's CPU allocation records)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    held = sum(e.self_cpu_memory_usage for e in prof.events())
    del out
    return held


@pytest.mark.parametrize("arch, size, batch", [("vit_pico", 28, 8), ("vit_mini", 56, 4)])
@pytest.mark.parametrize("mode", ["none", "selective", "full"])
def test_kept_bytes_match_a_real_forward(arch, size, batch, mode):
    torch.manual_seed(0)
    bb = build_backbone(arch, patch_size=7, img_size=size).train()
    bb.set_activation_checkpointing(mode)
    x = torch.randn(batch, 3, size, size)
    tokens = batch * ((size // 7) ** 2 + 1)
    held = _held_after_forward(lambda: bb.forward_features(x)["x_prenorm"])
    predicted = activation_bytes(bb, tokens, mode, 4) + tokens * bb.embed_dim * 4  # + the output itself
    assert abs(held - predicted) < 0.1 * held, (held, predicted)


def _nets(arch: str):
    bb = build_backbone(arch, patch_size=14, img_size=224)
    heads = heads_from_config(bb.embed_dim, HeadConfig(separate_ibot_head=True))
    teacher_bb = build_backbone(arch, patch_size=14, img_size=224)
    return SSLNet(bb, *heads), SSLNet(teacher_bb, *heads_from_config(bb.embed_dim, HeadConfig(separate_ibot_head=True)))


def test_the_cheapest_mode_that_fits_is_chosen():
    with torch.device("meta"):
        student, teacher = _nets("vit_small")
    tokens, rows = 10_000, 2_000
    _, totals = choose_checkpointing(student, teacher, tokens, 2, rows, 65536, 1)
    assert totals["none"] > totals["selective"] > totals["full"]
    for want in ("none", "selective", "full"):
        budget = int(totals[want] / 0.9) + 1
        assert choose_checkpointing(student, teacher, tokens, 2, rows, 65536, budget)[0] == want
    assert choose_checkpointing(student, teacher, tokens, 2, rows, 65536, int(totals["full"] * 0.9))[0] is None


def test_vit_l_batch_64_under_the_bf16_policy():
    """The GPU check's configuration: 2 + 8 crops at 224/98 px, K 65,536, ~30% of 256 patches
    masked in half the global crops. Without checkpointing the step needs ~59 GiB in bf16 (the
    MLP keeps its hidden layer before and after GELU): it fits 70 GiB, and 60 GiB (with the
    allocator's margin) takes selective checkpointing; fp32 activations would not fit at all."""
    with torch.device("meta"):
        student, teacher = _nets("vit_large")
    crops = CropConfig(global_size=224, local_size=98, n_local=8)
    tokens = step_tokens(crops, 14, 64)
    rows = 2 * 64 + 8 * 64 + int(0.5 * 128 * 0.3 * 256)
    mode, totals = choose_checkpointing(student, teacher, tokens, 2, rows, 65536, 70 * 2**30)
    assert tokens == 64 * (2 * 257 + 8 * 50)
    assert step_tokens(crops.model_copy(update={"n_global": 1}), 14, 64) == 64 * (257 + 8 * 50)
    assert mode == "none" and 54 * 2**30 < totals["none"] < 62 * 2**30
    assert choose_checkpointing(student, teacher, tokens, 2, rows, 65536, 60 * 2**30)[0] == "selective"
    fp32 = step_bytes(student, teacher, tokens, "none", 4, rows, 65536)["total"]
    assert fp32 > 70 * 2**30
