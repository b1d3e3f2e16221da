"""2-process (gloo) vs single-process equality of the losses.

Each rank holds half of the samples of one batch. With the collectives in place, DINO and iBOT
teacher targets (softmax centering and Sinkhorn-Knopp), centres, and the rank-averaged losses
(what DDP's gradient averaging optimises) equal the single-process full-batch values.
KoLeo is per rank by design (nearest neighbours within the local batch, as in DINOv2), so it is
not compared here.
"""

from __future__ import annotations

import copy
import random
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinoflow.config import MaskConfig
from dinoflow.data.masking import collate_masks
from dinoflow.losses import DINOLoss, iBOTPatchLoss
from dinoflow.losses.sinkhorn_device import sinkhorn_knopp_fused

WORLD = 2
K, B, N, N_LOCAL_CROPS, TEMP = 16, 8, 16, 4, 0.05


def _make_payload() -> dict:
    g = torch.Generator().manual_seed(0)
    masks = collate_masks(2 * B, 4, MaskConfig(mask_sample_probability=1.0), random.Random(3))["masks"]
    prev_masks = collate_masks(2 * B, 4, MaskConfig(mask_sample_probability=1.0), random.Random(4))["masks"]
    return {
        # crop-major, as the training loop stacks crops: [crop, sample, ...]
        "t_prev": torch.randn(2, B, K, generator=g) * 2,
        "t": torch.randn(2, B, K, generator=g) * 2,
        "s": torch.randn(N_LOCAL_CROPS, B, K, generator=g) * 2,
        "tp_prev": torch.randn(2, B, N, K, generator=g) * 2,
        "tp": torch.randn(2, B, N, K, generator=g) * 2,
        "sp": torch.randn(2, B, N, K, generator=g) * 2,
        "masks": masks.view(2, B, N),
        "prev_masks": prev_masks.view(2, B, N),
    }


def _compute(p: dict) -> dict:
    """One step of every loss on the samples in `p` (the full batch or one rank's half)."""
    b = p["t"].shape[1]
    out: dict[str, torch.Tensor] = {}

    dino = DINOLoss(K)
    dino.update_center(p["t_prev"].flatten(0, 1))
    targets = dino.softmax_center_teacher(p["t"].flatten(0, 1), TEMP).view(2, b, K)
    out["dino_softmax_targets"] = targets
    out["dino_softmax_loss"] = dino.local_crops_loss(p["s"].flatten(0, 1), targets)
    dino.update_center(p["t"].flatten(0, 1))
    dino.apply_center_update()
    out["dino_center"] = dino.center.clone()
    sk = dino.sinkhorn_knopp_teacher(p["t"].flatten(0, 1), TEMP).view(2, b, K)
    out["dino_sk_targets"] = sk
    out["dino_sk_loss"] = dino.local_crops_loss(p["s"].flatten(0, 1), sk)

    masks = p["masks"].flatten(0, 1)  # [2b, N]
    idx = masks.flatten().nonzero().flatten()
    t_m, s_m = p["tp"].flatten(0, 2)[idx], p["sp"].flatten(0, 2)[idx]
    prev_idx = p["prev_masks"].flatten().nonzero().flatten()
    per_image = 1.0 / masks.sum(-1).clamp(min=1)  # each masked token: 1 / masked tokens in its image
    masks_weight = per_image.unsqueeze(-1).expand_as(masks)[masks]
    ibot = iBOTPatchLoss(K)
    ibot.update_center(p["tp_prev"].flatten(0, 2)[prev_idx])
    for name, tgt in (
        ("softmax", ibot.softmax_center_teacher(t_m, TEMP)),
        ("sk", ibot.sinkhorn_knopp_teacher(t_m, TEMP, torch.tensor([idx.numel()]))),
    ):
        dense = torch.zeros(2 * b * N, K)
        dense[idx] = tgt
        out[f"ibot_{name}_targets"] = dense.view(2, b, N, K)
        out[f"ibot_{name}_loss"] = ibot.masked_loss(s_m, tgt, masks_weight, masks.shape[0])
    ibot.update_center(t_m)
    ibot.apply_center_update()
    out["ibot_center"] = ibot.center.clone()
    out["n_masked"] = torch.tensor(idx.numel())
    return out


def _worker(rank: int, port: int, workdir: str) -> None:
    # forked from a process that may have used OpenMP: stay single-threaded, never enter its pool
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        p = torch.load(Path(workdir) / "payload.pt", weights_only=True)
        half = slice(rank * B // WORLD, (rank + 1) * B // WORLD)  # dim 1 = sample, in every tensor
        local = {k: v[:, half] for k, v in p.items()}
        torch.save(_compute(local), Path(workdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    payload = _make_payload()
    torch.save(payload, tmp_path / "payload.pt")
    # fork, not spawn: 1 s instead of 10 s of re-importing torch in every child
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    full = _compute(payload)

    # the ranks hold different numbers of masked tokens: token counts really cross ranks
    assert ranks[0]["n_masked"] != ranks[1]["n_masked"]

    for key in ("dino_softmax_targets", "dino_sk_targets", "ibot_softmax_targets", "ibot_sk_targets"):
        joined = torch.cat([r[key] for r in ranks], dim=1)  # re-assemble the sample dimension
        assert torch.allclose(joined, full[key], atol=1e-6), key
    for key in ("dino_center", "ibot_center"):
        for r in ranks:
            assert torch.allclose(r[key], full[key], atol=1e-6), key
    for key in ("dino_softmax_loss", "dino_sk_loss", "ibot_softmax_loss", "ibot_sk_loss"):
        rank_mean = sum(float(r[key]) for r in ranks) / WORLD
        assert abs(rank_mean - float(full[key])) < 1e-5 * max(1.0, abs(float(full[key]))), key


def _sinkhorn_worker(rank: int, port: int, workdir: str) -> None:
    """Rank 0 holds every masked patch, rank 1 none: both must join the same collectives."""
    from datetime import timedelta

    torch.set_num_threads(1)
    # a rank skipping a collective would block the other: fail in a minute instead of hanging
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        p = torch.load(Path(workdir) / "payload.pt", weights_only=True)
        out = {}
        for name, logits in p.items():
            local = logits if rank == 0 else logits[:0]
            out[name] = iBOTPatchLoss(K).sinkhorn_knopp_teacher(local, TEMP, torch.tensor([len(local)]))
            # the device's path, run here on a CPU: same collectives on both ranks
            out[name + "_device"] = sinkhorn_knopp_fused(local, TEMP, 3, torch.tensor([len(local)]), backend=None)
        torch.save(out, Path(workdir) / f"sk{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_with_a_rank_that_holds_no_rows(tmp_path):
    g = torch.Generator().manual_seed(7)
    # scale 2: the CPU's linear-domain steps; scale 200: sums underflow there, the log-space steps run
    payload = {f"scale{s}": torch.randn(12, K, generator=g) * s for s in (2, 200)}
    torch.save(payload, tmp_path / "payload.pt")
    mp.start_processes(
        _sinkhorn_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"sk{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, logits in payload.items():
        full = iBOTPatchLoss(K).sinkhorn_knopp_teacher(logits, TEMP, torch.tensor([len(logits)]))
        for key in (name, name + "_device"):
            assert ranks[1][key].shape == (0, K)
            assert torch.isfinite(ranks[0][key]).all()
            assert torch.allclose(ranks[0][key], full, atol=1e-6), key


def test_centre_update_reads_nothing_on_the_host():
    """Regression: the pending row count was read on the host (`float(count)`), which on a GPU
    waits for the device every step. The update now compiles whole (a host read breaks the
    graph, an error under fullgraph) and still leaves the centre alone when there were no rows."""
    for loss, rows in ((DINOLoss(6), torch.randn(5, 6)), (iBOTPatchLoss(6), torch.randn(7, 6))):
        eager = copy.deepcopy(loss)
        for fn in (loss, eager):
            fn.center.fill_(0.25)
            fn.update_center(rows)
        torch._dynamo.reset()
        torch.compile(loss.apply_center_update, fullgraph=True, backend="eager")()
        eager.apply_center_update()
        assert torch.equal(loss.center, eager.center) and not torch.equal(
            loss.center, torch.full_like(loss.center, 0.25)
        )
        loss.update_center(torch.zeros(0, 6))
        torch._dynamo.reset()
        torch.compile(loss.apply_center_update, fullgraph=True, backend="eager")()
        assert torch.equal(loss.center, eager.center)


def test_a_device_tensor_count_is_taken_as_is():
    """iBOT's centre from a token sum may take the count as a tensor (no host read either)."""
    fn = iBOTPatchLoss(3)
    fn.update_center_from_sum(torch.tensor([2.0, 4.0, 6.0]), torch.tensor([2]))
    fn.apply_center_update()
    torch.testing.assert_close(fn.center.reshape(-1), 0.1 * torch.tensor([1.0, 2.0, 3.0]))
