"""CUDA-only checks of the fast training step (run by benchmarks/gpu/run.sh on a GPU machine; on a
CPU they are collected and skip: there is no device to run them on)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

TINY = [
    "pretrain.model={arch: vit_pico, patch_size: 7, img_size: 28, layerscale_init: 0.1}",
    "pretrain.head={out_dim: 512, ibot_out_dim: 512, hidden_dim: 64, bottleneck_dim: 32}",
    "pretrain.crops={global_size: 28, local_size: 14, n_local: 4}",
]


def _step_parts(*extra: str):
    from dinoflow.config import load_config
    from dinoflow.train.optim import build_optimizer, param_groups
    from dinoflow.train.pretrain_objective import PretrainObjective
    from dinoflow.train.schedules import Schedules

    cfg = load_config(None, TINY + list(extra)).pretrain
    dev = torch.device("cuda")
    obj = PretrainObjective(cfg, dev)
    net = obj.student
    opt = build_optimizer(param_groups(net.param_modules(), cfg.optim, {"backbone": net.backbone.n_blocks}), cfg.optim)
    sched = Schedules(cfg.optim, cfg.loss, epoch_length=10, epochs=1, total_batch=8)
    images = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8, device=dev)
    return cfg, obj, net, opt, sched, images


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "softmax"])
def test_bf16_step_never_waits_for_the_device(centering):
    """The whole optimiser step (teacher, student, losses, clipping, fused AdamW, EMA) queues work
    without one host synchronisation: sync debug mode turns any into an error."""
    from dinoflow.train.step import train_step

    cfg, obj, net, opt, sched, images = _step_parts(f"pretrain.loss.centering={centering}")
    views = [obj.views(images, i, 0) for i in range(3)]
    train_step(
        obj, net, opt, views[0], sched.at(0), clip_grad=3.0, device=images.device
    )  # warm-up: allocation, autotune
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, terms = train_step(obj, net, opt, views[1], sched.at(1), clip_grad=3.0, device=images.device)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss) and all(torch.isfinite(t) for t in terms.values())


def test_cross_entropy_on_bf16_logits_matches_fp64():
    from dinoflow.losses.soft_ce import soft_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(300, 65536, device="cuda", generator=g) * 3).bfloat16()
    targets = torch.softmax(torch.randn(300, 65536, device="cuda", generator=g) / 0.05, -1)
    want = -(targets.double() * torch.log_softmax(logits.double() / 0.1, -1)).sum(-1).mean()
    got = soft_cross_entropy(logits, targets, 0.1, 1 / 300)
    assert abs(float(got) - float(want)) < 1e-5 * abs(float(want))


def test_prototype_loss_peak_memory_is_a_chunk_not_the_matrix():
    """Heads-mode distillation's iBOT: 32,768 tokens × 65,536 prototypes would be 8 GiB in fp32;
    the factored loss stays within a few chunks."""
    from dinoflow.losses.soft_ce import prototype_cross_entropy

    n, d, k = 32768, 256, 65536
    z = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=-1).requires_grad_(True)
    w = torch.randn(k, d, device="cuda", requires_grad=True)
    t = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=-1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = prototype_cross_entropy(z, w, lambda a, b: torch.softmax(t[a:b] @ w.detach().t() / 0.05, -1), 0.1, 1 / n)
    loss.backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < n * k * 4 / 4


def test_packed_crops_match_one_pass_per_size_under_bf16():
    from dinoflow.models import build_backbone

    torch.manual_seed(0)
    m = build_backbone("vit_small", patch_size=14, img_size=224).cuda().train()
    xs = [torch.randn(8, 3, 224, 224, device="cuda"), torch.randn(32, 3, 98, 98, device="cuda")]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        m.pack_crops = True
        a = m.forward_features_list(xs, [None, None])
        m.pack_crops = False
        b = m.forward_features_list(xs, [None, None])
    for x, y in zip(a, b):
        torch.testing.assert_close(x["x_norm_clstoken"].float(), y["x_norm_clstoken"].float(), atol=3e-2, rtol=3e-2)


def test_blocks_compile_with_inductor_and_match_eager():
    from dinoflow.models import build_backbone

    torch.manual_seed(0)
    m = build_backbone("vit_pico", patch_size=7, img_size=28).cuda().train()
    xs, ms = [torch.randn(4, 3, 28, 28, device="cuda"), torch.randn(8, 3, 14, 14, device="cuda")], [None, None]
    want = m.forward_features_list(xs, ms)[0]["x_norm_clstoken"]
    torch._dynamo.reset()
    for blk in m.block_list():
        blk.compile(fullgraph=True, dynamic=False)
    got = m.forward_features_list(xs, ms)[0]["x_norm_clstoken"]
    got.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fsdp2_mixed_precision_computes_in_bf16_and_keeps_fp32_gradients():
    import torch.distributed as dist

    from dinoflow.config import HeadConfig
    from dinoflow.distributed.env import DistEnv
    from dinoflow.models import build_backbone, heads_from_config
    from dinoflow.train.parallelize import wrap_model
    from dinoflow.train.ssl_net import SSLNet

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        torch.manual_seed(0)
        bb = build_backbone("vit_pico", patch_size=7, img_size=28)
        dino, _ = heads_from_config(bb.embed_dim, HeadConfig(out_dim=256, hidden_dim=64, bottleneck_dim=32))
        net = SSLNet(bb, dino).cuda()
        # a world of one, wrapped as a multi-process job would be
        env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0), local_world_size=2)
        net = wrap_model(net, "fsdp", env)
        seen = []
        net.backbone.block_list()[0].attn.qkv.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.dtype))
        out = net(torch.randn(4, 3, 28, 28, device="cuda"))
        out["g_cls_logits"].float().square().mean().backward()
        assert seen == [torch.bfloat16]
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 for g in grads)
    finally:
        dist.destroy_process_group()


def test_sinkhorn_on_the_device_matches_the_cpu_and_never_waits():
    """The compiled log-space passes on bf16 logits (masked-token counts change every step: no
    recompilation, no host synchronisation) against the CPU's result."""
    from dinoflow.losses import sinkhorn_knopp

    g = torch.Generator(device="cuda").manual_seed(0)
    for rows in (300, 411):
        logits = (torch.randn(rows, 65536, device="cuda", generator=g) * 0.3).bfloat16()
        sinkhorn_knopp(logits, 0.07)  # compiles (first size) or reuses the dynamic graph
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = sinkhorn_knopp(logits, 0.07)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        want = sinkhorn_knopp(logits.float().cpu(), 0.07)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-7)
