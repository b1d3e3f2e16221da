"""FSDP2's mixed-precision policy as training applies it on CUDA (bf16 parameters and compute,
fp32 gradient reduction), run here on a CPU over a 1-rank gloo group with bf16 autocast: the
residual stream between blocks stays bf16 (an fp32 parameter or constant anywhere in a block
would promote it to fp32 for the rest of the network)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from dinoflow.config import HeadConfig
from dinoflow.distributed.env import DistEnv
from dinoflow.models import build_backbone, heads_from_config
from dinoflow.train.parallelize import wrap_model
from dinoflow.train.ssl_net import SSLNet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_bf16_policy_keeps_the_residual_stream_bf16():
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        bb = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=0.1)
        dino, ibot = heads_from_config(bb.embed_dim, HeadConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16))
        net = SSLNet(bb, dino, ibot)
        # the CUDA policy (bf16 parameters) on a world of one, wrapped as a multi-process job is;
        # nothing of the device is touched but the policy's choice
        env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0), local_world_size=2)
        net = wrap_model(net, "fsdp", env)
        seen = []
        for blk in bb.block_list():
            blk.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.randn(4, 3, 28, 28), torch.randn(8, 3, 14, 14))
        assert len(seen) in (len(bb.block_list()), 2 * len(bb.block_list()))  # packed crops, or one pass per size
        assert set(seen) == {(torch.bfloat16, torch.bfloat16)}, seen
        out["g_cls_logits"].float().square().mean().backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 for g in grads)
    finally:
        dist.destroy_process_group()


def test_fp32_parameters_under_autocast_stream_fp32():
    """Why the GPU check measures the FSDP2 path: without the policy (fp32 parameters, autocast
    alone) the CLS token, positional embedding and LayerScale promote the stream to fp32."""
    bb = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=0.1)
    seen = []
    for blk in bb.block_list():
        blk.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bb.forward_features(torch.randn(2, 3, 28, 28))
    assert set(seen) == {(torch.float32, torch.float32)}
