"""`dinoflow distill`: a frozen teacher into a smaller student, through the one training loop."""

from __future__ import annotations

from typing import Any

from dinoflow.config import Config


def distill(cfg: Config) -> dict[str, Any]:
    from dinoflow.train.distill_objectives import FeatureDistillObjective, HeadDistillObjective
    from dinoflow.train.loop import run_training
    from dinoflow.train.pretrain import check_geometry

    dc = cfg.distill
    check_geometry(dc.crops, dc.student.patch_size, "distill")
    objective_cls = HeadDistillObjective if dc.mode == "heads" else FeatureDistillObjective
    return run_training(
        lambda device: objective_cls(dc, device), stage="distill", tcfg=dc.train, clip_grad=dc.optim.clip_grad,
        optim_cfg=dc.optim, loss_cfg=dc.loss, data=dc.data, load_size=dc.train.load_size or dc.crops.global_size,
        out_dir=dc.out_dir, report_csv=dc.report_csv, seed=dc.seed, full_config=dc,
    )
