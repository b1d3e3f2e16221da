"""The dense half of the `evaluate` stage: every candidate (models and baselines) under the linear dense probes.

Called by `evaluation.run.evaluate` with the candidates it already built; the raw-pixel baseline is
the image's own patches on the same token grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dinoflow.config import DENSE_KINDS, EvalDataset, EvaluateConfig, stage_seed
from dinoflow.digest import arrays_sha256
from dinoflow.errors import DinoflowError
from dinoflow.evaluation import dense_demo
from dinoflow.evaluation.candidates import Candidate
from dinoflow.evaluation.dense_data import (
    DenseSplit,
    DenseTask,
    check_depth_valid,
    load_dense_folder,
    segmentation_classes,
)
from dinoflow.evaluation.dense_figure import save_dense_png
from dinoflow.evaluation.dense_probe import DenseTarget, dense_probe
from dinoflow.evaluation.dense_report import dense_entry

log = logging.getLogger(__name__)

MIN_DEPTH = 1e-3
DEFAULT_PIXEL_PATCH = 14
N_FIGURE_IMAGES = 4


@dataclass
class DenseOutcome:
    """{model: {dataset: entry}}, each dataset's sizes and fingerprint, and the PNGs drawn."""

    section: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def is_dense(ds: EvalDataset) -> bool:
    return ds.kind in DENSE_KINDS


def _subset(split: DenseSplit, max_train: int | None, max_test: int | None, seed: int) -> DenseSplit:
    def cut(data: Any, n: int | None, s: int) -> Any:
        if n is None or len(data) <= n:
            return data
        return data.subset(np.sort(np.random.default_rng(s).permutation(len(data))[:n]))

    return DenseSplit(
        split.name, split.task, cut(split.train, max_train, seed), cut(split.test, max_test, seed + 1), split.classes
    )


def load_dense_dataset(ds: EvalDataset, *, seed: int, max_train: int | None, max_test: int | None) -> DenseSplit:
    """One configured dense set, checked whole before any model runs."""
    if ds.kind == "demo_segmentation":
        split = dense_demo.demo_segmentation(ds.name)
    elif ds.kind == "demo_depth":
        split = dense_demo.demo_depth(ds.name)
    else:
        task: DenseTask = "segmentation" if ds.kind == "segmentation_folder" else "depth"
        train = load_dense_folder(ds.train, task)  # type: ignore[arg-type]
        test = load_dense_folder(ds.test, task)  # type: ignore[arg-type]
        classes = segmentation_classes(train, test) if task == "segmentation" else []
        split = DenseSplit(ds.name, task, train, test, classes)
    if split.task == "depth":
        check_depth_valid(split.train, f"{ds.name} train")
        check_depth_valid(split.test, f"{ds.name} test")
    return _subset(split, max_train, max_test, seed)


def dense_target(split: DenseSplit, ds: EvalDataset) -> DenseTarget:
    if split.task == "segmentation":
        return DenseTarget("segmentation", num_classes=split.num_classes)
    top = ds.max_depth or float(max(t.max() for t in split.train.targets))
    return DenseTarget("depth", min_depth=MIN_DEPTH, max_depth=top)


def _protocol(ev: EvaluateConfig, ds: EvalDataset, size: int, target: DenseTarget) -> dict[str, Any]:
    return {
        "image_size": size,
        "lrs": list(ev.dense_lrs),
        "epochs": ev.dense_epochs,
        "val_fraction": ev.val_fraction,
        "target": target.__dict__,
    }


def evaluate_dense(
    ev: EvaluateConfig, candidates: Sequence[Candidate], device: torch.device, out_dir: Path
) -> DenseOutcome:
    """Run every dense dataset of `ev.datasets` for every candidate; raw pixels are cut on the patch
    grid of the first backbone (else `DEFAULT_PIXEL_PATCH`)."""
    out = DenseOutcome()
    patch = next((c.backbone.patch_size for c in candidates if c.backbone is not None), DEFAULT_PIXEL_PATCH)
    for ds in (d for d in ev.datasets if is_dense(d)):
        split = load_dense_dataset(ds, seed=stage_seed(ev.seed), max_train=ev.max_train, max_test=ev.max_test)
        size = ds.image_size or ev.image_size
        target = dense_target(split, ds)
        out.datasets[ds.name] = {
            "task": split.task,
            "n_train": len(split.train),
            "n_test": len(split.test),
            "fingerprint": arrays_sha256(
                [split.train.images, split.train.targets, split.test.images, split.test.targets],
                _protocol(ev, ds, size, target),
            ),
        }
        preds = {}
        for c in candidates:
            tr, te = (
                c.grids(data.images, size=size, patch=patch, with_cls=split.task == "depth", device=device)
                for data in (split.train, split.test)
            )
            try:
                res = dense_probe(
                    tr, split.train, te, split.test, target,
                    lrs=ev.dense_lrs, epochs=ev.dense_epochs, batch_size=ev.dense_batch_size,
                    val_fraction=ev.val_fraction, seed=stage_seed(ev.seed),
                )  # fmt: skip
            except ValueError as e:
                raise DinoflowError(f"dense evaluation {ds.name}/{c.name}: {e}") from None
            out.section.setdefault(c.name, {})[ds.name] = dense_entry(split.task, res.metrics, res.lr)
            preds[c.name] = res.preds[:N_FIGURE_IMAGES]
            log.info("%s/%s: %s", c.name, ds.name, res.metrics)
        if ev.n_pca_images:
            k = min(N_FIGURE_IMAGES, len(split.test))
            png = save_dense_png(
                out_dir / f"eval_dense_{ds.name}.png",
                split.test.images[:k],
                split.test.targets[:k],
                preds,
                split.task,
                f"{ds.name}: {split.task} on frozen patch tokens (test images)",
            )
            out.figures.append(str(png))
    return out
