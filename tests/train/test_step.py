"""The step's setup: per-block compilation by default on CUDA only."""

from __future__ import annotations

import torch

from dinoflow.config import load_config
from dinoflow.distributed.env import DistEnv
from dinoflow.train.pretrain_objective import PretrainObjective
from dinoflow.train.step import compile_enabled, prepare_networks
from tests.train.conftest import TINY


def test_compile_is_on_by_default_on_cuda_and_off_on_a_cpu():
    cfg = load_config(None, TINY).pretrain
    assert cfg.train.compile == "auto"
    assert compile_enabled("auto", torch.device("cuda", 0)) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(False, torch.device("cuda"))


def test_a_cpu_run_with_the_default_setting_leaves_the_blocks_eager():
    cfg = load_config(None, TINY).pretrain
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    obj = PretrainObjective(cfg, env.device)
    net = prepare_networks(obj, cfg.train, env)
    for m in (net, obj.teacher):
        assert all(getattr(b, "_compiled_call_impl", None) is None for b in m.backbone.block_list())
    forced = PretrainObjective(cfg, env.device)
    prepare_networks(forced, cfg.train.model_copy(update={"compile": True}), env)
    assert all(b._compiled_call_impl is not None for b in forced.student.backbone.block_list())


def test_the_last_block_stays_pruned_under_compile_and_compiles_twice_at_most():
    """The last block computes only the kept tokens under compile too; their count changes every
    step, and after one recompilation (the count becomes symbolic) new counts compile nothing."""
    from dinoflow.models import build_backbone
    from dinoflow.train.step import compile_blocks

    torch.manual_seed(0)
    bb = build_backbone("vit_pico", patch_size=7, img_size=28).train()
    eager = build_backbone("vit_pico", patch_size=7, img_size=28).train()
    eager.load_state_dict(bb.state_dict())
    graphs = []

    def counting(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    holder = torch.nn.Module()
    holder.backbone = bb
    compile_blocks(holder, torch.device("cpu"), backend=counting)
    assert bb.prune_last_block
    xs, ms = [torch.randn(4, 3, 28, 28), torch.randn(8, 3, 14, 14)], [None, None]
    for n_kept in (5, 9, 13, 2):
        keep = [torch.randperm(4 * 16)[:n_kept], torch.arange(0)]
        got = bb.forward_kept(xs, ms, keep)
        want = eager.forward_kept(xs, ms, keep)
        assert got[0]["x_norm_patchtokens_kept"].shape[0] == n_kept
        for g, w in zip(got, want):
            torch.testing.assert_close(g["x_norm_patchtokens_kept"], w["x_norm_patchtokens_kept"])
            torch.testing.assert_close(g["x_norm_clstoken"], w["x_norm_clstoken"])
    last = len([g for g in graphs if "index_select" in g.code])
    assert 1 <= last <= 2, f"the last block compiled {last} times for 4 kept-token counts"
