"""`dinoflow pretrain`: the DINOv2 recipe through the one training loop."""

from __future__ import annotations

from typing import Any

from dinoflow.config import Config
from dinoflow.errors import DinoflowError


def check_geometry(crops, patch_size: int, what: str) -> None:
    """Crop sizes must tile into whole patches; say so before any work starts."""
    for name in ("global_size", "local_size"):
        size = getattr(crops, name)
        if size % patch_size:
            raise DinoflowError(
                f"{what}.crops.{name}={size} is not a multiple of the patch size {patch_size}; "
                f"use e.g. {size - size % patch_size or patch_size}"
            )


def pretrain(cfg: Config) -> dict[str, Any]:
    from dinoflow.train.loop import run_training
    from dinoflow.train.pretrain_objective import PretrainObjective

    pc = cfg.pretrain
    check_geometry(pc.crops, pc.model.patch_size, "pretrain")
    return run_training(lambda device: PretrainObjective(pc, device), stage="pretrain", cfg=cfg, section=pc)
