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

import torch

from dinoflow.config.model_size import FLOAT_BYTES, backbone_params
from dinoflow.errors import DinoflowError
from dinoflow.memory import GIB, available_bytes, refuse_over_memory

ACTIVATION_FLOATS = 8


def bytes_per_image(model_cfg, crops, load_size: int) -> int:
    """Lower bound of the memory one image of the batch takes during a training step."""
    from dinoflow.models.presets import arch_spec

    spec = arch_spec(model_cfg.arch)
    extra = 1 + model_cfg.num_register_tokens
    tokens = crops.n_global * ((crops.global_size // model_cfg.patch_size) ** 2 + extra)
    tokens += crops.n_local * ((crops.local_size // model_cfg.patch_size) ** 2 + extra)
    loaded = 2 * 3 * load_size**2
    crops_f32 = 4 * 3 * (crops.n_global * crops.global_size**2 + crops.n_local * crops.local_size**2)
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


def training_state_bytes(model_cfg, head_cfg=None, with_teacher_copy: bool = True) -> int:
    """Lower bound of what the trained network's state takes: weights, gradients and AdamW's two
    moments of the student (backbone + heads), plus the EMA teacher's weights when it is a copy."""
    from dinoflow.models.presets import arch_spec

    n = backbone_params(
        model_cfg.arch, model_cfg.patch_size, model_cfg.img_size, model_cfg.num_register_tokens,
        model_cfg.ffn_layer, model_cfg.layerscale_init is not None,
    )  # fmt: skip
    if head_cfg is not None:
        n += head_cfg.params(arch_spec(model_cfg.arch).embed_dim)
    return FLOAT_BYTES * n * (4 + (1 if with_teacher_copy else 0))


def check_model_fits(stage: str, model_key: str, need: int, device: torch.device, world_size: int) -> None:
    """Refuse, before the networks are built, a training state that cannot fit even sharded over every rank."""
    refuse_over_memory(
        f"training {stage}.{model_key} (weights, gradients, optimiser state{' and teacher' if stage == 'pretrain' else ''}"
        f", split over {world_size} process{'es' if world_size > 1 else ''})",
        need // max(1, world_size),
        f"Choose a smaller {stage}.{model_key}.arch, img_size or head, or train on more or larger devices.",
        device,
    )
