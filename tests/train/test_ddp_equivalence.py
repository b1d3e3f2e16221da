"""DDP with 2 processes × batch B equals 1 process × batch 2B on the same crops and masks
(DINO + iBOT terms; KoLeo is per-rank by design, so its weight is 0 here): same loss, same
parameters after one optimiser step, for both teacher normalisations."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinoflow.config import load_config

pytestmark = pytest.mark.slow
B = 4  # per rank
N_LOCAL = 2


def _cfg(centering: str):
    return load_config(
        None,
        [
            "pretrain.model={arch: vit_pico, patch_size: 7, img_size: 28, layerscale_init: 0.1}",
            "pretrain.head={out_dim: 32, hidden_dim: 16, bottleneck_dim: 8}",
            f"pretrain.crops={{global_size: 28, local_size: 14, n_local: {N_LOCAL}}}",
            f"pretrain.loss={{koleo_weight: 0.0, centering: {centering}, warmup_teacher_temp_epochs: 0}}",
            "pretrain.optim={warmup_epochs: 0, freeze_last_layer_epochs: 0, base_lr: 0.05}",
        ],
    ).pretrain


def _full_views(seed: int = 0) -> dict:
    """Views for 2B images: crop-major, masks with the official per-image weighting."""
    g = torch.Generator().manual_seed(seed)
    n_img = 2 * B
    global_crops = torch.randn(2 * n_img, 3, 28, 28, generator=g)
    local_crops = torch.randn(N_LOCAL * n_img, 3, 14, 14, generator=g)
    masks = torch.rand(2 * n_img, 16, generator=g) < 0.4
    masks[:, 0] = True  # every image has at least one masked patch
    return {"global_crops": global_crops, "local_crops": local_crops, "masks": masks}


def _slice(full: dict, rank: int, world: int) -> dict:
    """Rank `rank`'s share in crop-major order: each crop block is cut the same way."""

    def part(t, n_crops):
        blocks = t.chunk(n_crops)
        per = blocks[0].shape[0] // world
        return torch.cat([b[rank * per : (rank + 1) * per] for b in blocks])

    v = {
        "global_crops": part(full["global_crops"], 2),
        "local_crops": part(full["local_crops"], N_LOCAL),
        "masks": part(full["masks"], 2),
    }
    m = v["masks"]
    v["mask_indices"] = m.flatten().nonzero().flatten()
    v["masks_weight"] = (1 / m.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(m)[m]
    v["n_masked_patches"] = torch.tensor([int(m.sum())])
    return v


def _step(rank: int, world: int, centering: str) -> tuple[float, dict]:
    from dinoflow.train.optim import build_optimizer, param_groups
    from dinoflow.train.pretrain_objective import PretrainObjective
    from dinoflow.train.schedules import Schedules
    from dinoflow.train.step import train_step

    pc = _cfg(centering)
    obj = PretrainObjective(pc, torch.device("cpu"))
    net = obj.student
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    base = obj.student
    opt = build_optimizer(param_groups(base.param_modules(), pc.optim, {"backbone": base.backbone.n_blocks}), pc.optim)
    s = Schedules(pc.optim, pc.loss, epoch_length=10, epochs=1, total_batch=2 * B).at(0)
    s["lr"] = s["last_layer_lr"] = 0.05
    views = _slice(_full_views(), rank, world)
    grads: dict = {}
    real_step = opt.step

    def step_and_keep_grads(*a, **k):  # the gradients DDP averaged, just before AdamW uses them
        grads.update({n: p.grad.detach().clone() for n, p in base.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    opt.step = step_and_keep_grads
    loss, _ = train_step(obj, net, opt, views, s, clip_grad=3.0)
    loss = float(loss)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    return loss, {**{f"param/{k}": v for k, v in sd.items()}, **{f"grad/{k}": v for k, v in grads.items()}}


def _worker(rank: int, world: int, port: int, centering: str, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss, sd = _step(rank, world, centering)
        if rank == 0:
            torch.save({"loss": loss, "sd": sd}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("centering", ["softmax", "sinkhorn_knopp"])
def test_two_ranks_match_one_rank_with_double_batch(centering, tmp_path):
    ref_loss, ref_sd = _step(0, 1, centering)
    ctx = mp.get_context("spawn")
    port, out_path = _free_port(), str(tmp_path / "rank0.pt")
    procs = [ctx.Process(target=_worker, args=(r, 2, port, centering, out_path)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    res = torch.load(out_path, weights_only=True)
    loss, sd = res["loss"], res["sd"]
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    grad_keys = [k for k in ref_sd if k.startswith("grad/")]
    assert len(grad_keys) > 10 and set(grad_keys) == {k for k in sd if k.startswith("grad/")}
    for k in grad_keys:
        scale = float(ref_sd[k].abs().max()) + 1e-12
        assert float((sd[k] - ref_sd[k]).abs().max()) <= 1e-4 * scale + 1e-9, k
    # AdamW's first step is lr·g/(|g|+eps): elements whose gradient is ~eps amplify float noise,
    # so parameters are compared at a small fraction of the learning rate (0.05).
    init = _step_init(centering)
    worst = max(float((sd[k] - ref_sd[k]).abs().max()) for k in ref_sd if k.startswith("param/"))
    assert worst < 0.05 * 0.05, worst
    moved = max(float((ref_sd[f"param/{k}"] - init[k]).abs().max()) for k in init)
    assert moved > 0.01  # the step really changed the parameters


def _step_init(centering: str) -> dict:
    from dinoflow.train.pretrain_objective import PretrainObjective

    return PretrainObjective(_cfg(centering), torch.device("cpu")).student.state_dict()
