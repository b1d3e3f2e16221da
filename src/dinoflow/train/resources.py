"""Up-front check that a training batch can fit in memory, before any data is read.

An absurd `batch_size_per_rank` otherwise decodes images for minutes and then dies with a
MemoryError (or the kernel's OOM killer). The estimate is a LOWER bound on what one step holds
at once, so a batch it refuses cannot fit; a batch it accepts may still be too large:
- the loaded batch (uint8 squares, twice: the samples and the collated batch) and the float crops;
- the student's activations kept for the backward pass: ACTIVATION_FLOATS floats per token, per
  block, per embedding dimension (a pre-norm ViT block keeps about 15: inputs of both norms, qkv,
  attention output, the MLP's hidden layer before and after GELU; 8 leaves a wide margin).
It is compared with the memory available to this process: free GPU memory on CUDA; on CPU the
smaller of the host's MemAvailable and the cgroup (container) limit left, shared by the ranks
torchrun starts on this node.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dinoflow.errors import DinoflowError

ACTIVATION_FLOATS = 8
GIB = 2**30


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes(device: torch.device) -> int | None:
    """Memory this process may still allocate on `device` (None when it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    candidates = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        candidates.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    for limit_f, used_f in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, used = _read_int(limit_f), _read_int(used_f)
        if limit is not None and used is not None and limit < 2**60:
            candidates.append(max(0, limit - used))
    if not candidates:
        return None
    return min(candidates) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def bytes_per_image(model_cfg, crops, load_size: int) -> int:
    """Lower bound of the memory one image of the batch takes during a training step."""
    from dinoflow.models.presets import arch_spec

    spec = arch_spec(model_cfg.arch)
    extra = 1 + model_cfg.num_register_tokens
    tokens = 2 * ((crops.global_size // model_cfg.patch_size) ** 2 + extra)
    tokens += crops.n_local * ((crops.local_size // model_cfg.patch_size) ** 2 + extra)
    loaded = 2 * 3 * load_size**2
    crops_f32 = 4 * 3 * (2 * crops.global_size**2 + crops.n_local * crops.local_size**2)
    activations = 4 * ACTIVATION_FLOATS * tokens * spec.embed_dim * spec.depth
    return loaded + crops_f32 + activations


def check_batch_fits(what: str, batch_size: int, model_cfg, crops, load_size: int, device: torch.device) -> None:
    """Raise a DinoflowError naming `what` (the batch-size key) when the batch cannot fit."""
    avail = available_bytes(device)
    if avail is None:
        return
    per_image = bytes_per_image(model_cfg, crops, load_size)
    need = batch_size * per_image
    if need > avail:
        fits = max(0, avail // per_image)
        raise DinoflowError(
            f"{what}={batch_size} needs at least {need / GIB:.1f} GiB per process on {device.type} "
            f"(≥ {per_image / 2**20:.2f} MiB per image for crops and activations of {model_cfg.arch}), but only "
            f"{avail / GIB:.1f} GiB is available: lower {what} (at most about {fits} fits; fewer in practice)"
        )
