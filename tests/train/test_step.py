"""The step's setup: per-block compilation by default on CUDA only."""

from __future__ import annotations

import torch

from dinoflow.config import load_config
from dinoflow.train.distributed import DistEnv
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
