"""`dinoflow distill`: a frozen teacher into a smaller student, through the one training loop."""

from __future__ import annotations

from typing import Any, Sequence

from dinoflow.config import Config, ModelConfig
from dinoflow.train.pretrain import check_geometry


def distill(cfg: Config) -> dict[str, Any]:
    from dinoflow.train.distill_family import FamilyObjective
    from dinoflow.train.distill_objectives import FeatureDistillObjective, HeadDistillObjective
    from dinoflow.train.loop import run_training

    dc = cfg.distill
    students: Sequence[ModelConfig] = dc.students or [dc.student]
    for st in students:
        check_geometry(dc.crops, st.patch_size, "distill")
    if dc.students:
        return run_training(lambda device: FamilyObjective(dc, device), stage="distill", cfg=cfg, section=dc)
    objective_cls = HeadDistillObjective if dc.mode == "heads" else FeatureDistillObjective
    return run_training(lambda device: objective_cls(dc, device), stage="distill", cfg=cfg, section=dc)
