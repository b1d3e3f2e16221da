"""What a finished stage writes: the averaged network's backbone (and, for pretraining, its
heads), gathered from shards when the network is FSDP2-sharded."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dinoflow.config import ModelConfig
from dinoflow.models import backbone_from_config, export_backbone
from dinoflow.models.weights import BACKBONE_FILE
from dinoflow.models.wrappers import unwrap


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU. Collective when the module is FSDP2-sharded: every rank
    must call it (ranks other than 0 may discard the result)."""
    sd = get_model_state_dict(unwrap(module), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, torch.Tensor], sd)  # a module's state dict holds tensors; torch types every value kind


def sub_state_dict(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` ("backbone."), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def export_network(
    module: nn.Module, model_cfg: ModelConfig, out_dir: str | Path, is_main: bool
) -> dict[str, torch.Tensor] | None:
    """Write `module.backbone` as `<out_dir>/backbone.pth` + config.yaml (rank 0): the file
    `dinoflow.models.artifact.BackboneArtifact.open(out_dir)` opens.

    Collective under FSDP: every rank calls it. Returns the full state dict of `module` on rank
    0 (for the caller's further files), None elsewhere.
    """
    sd = full_state_dict(module)
    if not is_main:
        return None
    backbone = backbone_from_config(model_cfg)
    backbone.load_state_dict(sub_state_dict(sd, "backbone."))
    export_backbone(backbone, Path(out_dir) / BACKBONE_FILE, model_cfg=model_cfg)
    return sd
