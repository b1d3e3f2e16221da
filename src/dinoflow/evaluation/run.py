"""The `evaluate` stage: frozen-feature k-NN, linear probe and logistic regression for every model
and dataset, next to two baselines (raw pixels; the same architecture at random init).

Outputs (in `evaluate.report_dir`): eval.json, eval.md, eval_patch_pca_<dataset>.png,
eval_cls_map_<dataset>.png. Accuracies are fractions in [0, 1]. eval.json also records what was
evaluated (`_provenance`): the sha256 of each model file and a fingerprint of each evaluation set
and k-NN protocol, so `register` can refuse a report about another file and compare a candidate
with the champion only on the same evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinoflow import tracking
from dinoflow.config import Config, EvaluateConfig
from dinoflow.digest import arrays_sha256
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.datasets import EvalSplit, load_eval_dataset
from dinoflow.evaluation.dense_run import evaluate_dense, is_dense
from dinoflow.evaluation.features import FeatureSet, extract_features, patch_tokens, pixel_features, resolve_device
from dinoflow.evaluation.knn import knn_accuracy
from dinoflow.evaluation.linear import linear_probe
from dinoflow.evaluation.logreg import logreg_probe
from dinoflow.evaluation.report import (
    eval_entry,
    pca_rgb,
    save_cls_map_png,
    save_patch_pca_png,
    write_eval_json,
    write_markdown,
)
from dinoflow.models.artifact import BackboneArtifact, BackboneNotFound
from dinoflow.models.family import student_folders

log = logging.getLogger(__name__)

RANDOM_INIT = "random_init"
RAW_PIXELS = "raw_pixels"


def _producing_stage(cfg: Config, name: str, path: Path) -> str:
    def under(d: str) -> bool:
        try:
            path.resolve().relative_to(Path(d).resolve())
            return True
        except ValueError:
            return False

    if under(cfg.pretrain.out_dir) or name == "teacher":
        return "the `pretrain` stage (`dinoflow pretrain`)"
    if under(cfg.distill.out_dir) or name == "student":
        return "the `distill` stage (`dinoflow distill`)"
    return "`dinoflow.models.export_backbone` (or an official hub backbone file)"


def check_model_files(cfg: Config) -> dict[str, BackboneArtifact]:
    """The configured backbones, or a DinoflowError naming each missing file and what produces it.

    A family of students (`<path>/<name>/backbone.pth`) becomes one model per student, `<model>-<name>`."""
    out: dict[str, BackboneArtifact] = {}
    missing: list[str] = []
    for name, p in cfg.evaluate.models.items():
        if name in (RANDOM_INIT, RAW_PIXELS):
            raise DinoflowError(f"evaluate.models.{name}: {name!r} is a baseline name; rename the model")
        if name.startswith("_"):
            raise DinoflowError(
                f"evaluate.models.{name}: names starting with '_' are reserved in eval.json; rename the model"
            )
        if members := student_folders(p):
            out.update({f"{name}-{m}": BackboneArtifact.open(folder) for m, folder in members.items()})
            continue
        stage = _producing_stage(cfg, name, Path(p))
        try:
            out[name] = BackboneArtifact.open(
                p,
                f"model {name!r}: {{path}} does not exist; it is produced by {stage} "
                f"— run that first, or point evaluate.models.{name} at a backbone file",
            )
        except BackboneNotFound as e:
            missing.append(str(e))
    if missing:
        raise DinoflowError("evaluation inputs missing:\n  " + "\n  ".join(missing))
    return out


def _describe(model: torch.nn.Module, extra: str = "") -> str:
    c = getattr(model, "config", None)
    if c is None:
        return extra
    ls = "none" if c.layerscale_init is None else f"{c.layerscale_init:g}"
    regs = f", {c.num_register_tokens} registers" if c.num_register_tokens else ""
    return f"{c.arch}/{c.patch_size}{regs} (LayerScale init {ls}){extra}"


def build_random_init(reference: torch.nn.Module, ev: EvaluateConfig) -> torch.nn.Module:
    """The reference's architecture, freshly initialised (official init) with `random_init_layerscale`, seeded."""
    from dinoflow.models import vit

    cfg = getattr(reference, "config", None)
    if cfg is None:
        raise DinoflowError("the random-init baseline needs a model built by dinoflow.models (it reads model.config)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ev.seed)
        model = vit.backbone_from_config(cfg, layerscale_init=ev.random_init_layerscale, drop_path_rate=0.0)
    return model.eval()


def eval_set_fingerprint(split: EvalSplit, ev: EvaluateConfig) -> str:
    """sha256 of the train/test images and labels as evaluated, plus the settings behind k-NN top-1."""

    def images(data: Any) -> Any:
        return iter(data.images)  # image by image: a stacked array and a list of the same images hash alike

    protocol = {
        "image_size": ev.image_size,
        "resize_ratio": ev.resize_ratio,
        "ks": sorted(ev.ks),
        "temperature": ev.temperature,
    }
    return arrays_sha256([images(split.train), [split.train.labels], images(split.test), [split.test.labels]], protocol)


def _pca_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n test images, one per class first (so the figure shows different content)."""
    first = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(first)]
    return np.asarray((first + rest)[:n], dtype=np.int64)


def _evaluate_features(
    ev: EvaluateConfig, train: FeatureSet, test: FeatureSet, num_classes: int, notes: list[str], tag: str
) -> dict[str, Any]:
    knn = knn_accuracy(
        train.cls,
        train.labels,
        test.cls,
        test.labels,
        ks=ev.ks,
        temperature=ev.temperature,
        num_classes=num_classes,
        batch_size=ev.batch_size,
    )
    clipped = {k: v["k_used"] for k, v in knn.items() if v["k_used"] != k}
    if clipped:
        notes.append(f"{tag}: k-NN k clipped to the {len(train)} train samples: {clipped}")
    lin = linear_probe(
        train,
        test,
        num_classes=num_classes,
        n_last_blocks=ev.linear_n_last_blocks,
        avgpool=ev.linear_avgpool,
        lrs=ev.linear_lrs,
        val_fraction=ev.val_fraction,
        epochs=ev.linear_epochs,
        batch_size=ev.linear_batch_size,
        seed=ev.seed,
    )
    notes += [f"{tag}: linear probe: {n}" for n in lin.notes]
    lr = logreg_probe(
        train.cls,
        train.labels,
        test.cls,
        test.labels,
        cs=ev.logreg_cs,
        val_fraction=ev.val_fraction,
        seed=ev.seed,
        max_iter=ev.logreg_max_iter,
    )
    notes += [f"{tag}: logreg: {n}" for n in lr.notes]
    entry = eval_entry(knn, lin.test_top1, lin.best.as_dict(), lr.test_top1)
    log.info(
        "%s: k-NN %.3f, linear %.3f, logreg %.3f (C=%g)", tag, entry["knn_top1"], lin.test_top1, lr.test_top1, lr.best_c
    )
    return entry


def evaluate(cfg: Config) -> dict[str, Any]:
    """Run the evaluation stage; returns a JSON-able summary (the report, paths, notes)."""
    ev = cfg.evaluate
    artifacts = check_model_files(cfg)

    device = resolve_device(ev.device)
    out_dir = Path(ev.report_dir)
    notes: list[str] = []
    descriptions: dict[str, str] = {}
    report: dict[str, dict[str, Any]] = {}
    figures: list[str] = []
    ds_meta: dict[str, dict[str, int]] = {}
    # hashed before loading: the record names the bytes this run evaluated
    provenance: dict[str, Any] = {
        "models": {n: {"path": str(a.path), "sha256": a.sha256()} for n, a in artifacts.items()},
        "datasets": {},
    }

    with tracking.stage_run("evaluate", cfg):
        models: dict[str, torch.nn.Module] = {}
        for name, artifact in artifacts.items():
            models[name] = artifact.load()
            descriptions[name] = _describe(models[name], f", from {artifact.path}")
        if RANDOM_INIT in ev.baselines:
            ref_name = ev.random_init_like or ("teacher" if "teacher" in models else next(iter(models), None))
            if ref_name is None:
                notes.append("random_init baseline skipped: no model to copy the architecture from")
            elif ref_name not in models:
                raise DinoflowError(
                    f"evaluate.random_init_like={ref_name!r} is not one of evaluate.models {list(models)}"
                )
            else:
                models[RANDOM_INIT] = build_random_init(models[ref_name], ev)
                descriptions[RANDOM_INIT] = _describe(
                    models[RANDOM_INIT],
                    f", architecture of {ref_name!r} at random init (official trunc-normal 0.02 init, seed {ev.seed})",
                )
        if RAW_PIXELS in ev.baselines:
            descriptions[RAW_PIXELS] = (
                f"resized/centre-cropped pixels in [0, 1] at {ev.image_size} px, flattened (no mean/std normalisation)"
            )
        n_blocks = max(ev.linear_n_last_blocks)
        for ds in (d for d in ev.datasets if not is_dense(d)):
            split: EvalSplit = load_eval_dataset(ds, seed=ev.seed, max_train=ev.max_train, max_test=ev.max_test)
            ds_meta[ds.name] = {"n_train": len(split.train), "n_test": len(split.test), "n_classes": split.num_classes}
            provenance["datasets"][ds.name] = {"fingerprint": eval_set_fingerprint(split, ev), **ds_meta[ds.name]}
            test_cls: dict[str, torch.Tensor] = {}
            for name, model in models.items():
                kw = dict(
                    image_size=ev.image_size,
                    resize_ratio=ev.resize_ratio,
                    batch_size=ev.batch_size,
                    n_last_blocks=n_blocks,
                    device=device,
                    progress=ev.progress,
                )
                tr = extract_features(
                    model, split.train.images, split.train.labels, desc=f"{ds.name}/{name}/train", **kw
                )
                te = extract_features(model, split.test.images, split.test.labels, desc=f"{ds.name}/{name}/test", **kw)
                report.setdefault(name, {})[ds.name] = _evaluate_features(
                    ev, tr, te, split.num_classes, notes, f"{name}/{ds.name}"
                )
                test_cls[name] = te.cls
            if RAW_PIXELS in ev.baselines:
                kw = dict(image_size=ev.image_size, resize_ratio=ev.resize_ratio, progress=ev.progress)
                tr = pixel_features(split.train.images, split.train.labels, desc=f"{ds.name}/pixels/train", **kw)
                te = pixel_features(split.test.images, split.test.labels, desc=f"{ds.name}/pixels/test", **kw)
                report.setdefault(RAW_PIXELS, {})[ds.name] = _evaluate_features(
                    ev, tr, te, split.num_classes, notes, f"{RAW_PIXELS}/{ds.name}"
                )
                test_cls[RAW_PIXELS] = te.cls
            for name, entry in ((m, report[m][ds.name]) for m in report if ds.name in report[m]):
                tracking.log_metrics({f"{ds.name}.{name}.{k}": v for k, v in entry.items() if isinstance(v, float)})
            figures += _figures(ev, split, models, test_cls, out_dir, device)

        dense = evaluate_dense(ev, models, device, out_dir, RAW_PIXELS if RAW_PIXELS in ev.baselines else None)
        _log_dense(dense.section)
        provenance["dense_datasets"] = dense.datasets
        figures += dense.figures
        notes = list(dict.fromkeys(notes))
        json_path = write_eval_json(out_dir / "eval.json", report, provenance, dense.section)
        meta = {"notes": notes, "models": descriptions, "datasets": ds_meta, "figures": figures}
        md_path = write_markdown(out_dir / "eval.md", report, {**meta, "dense_datasets": dense.datasets}, dense.section)
        for p in (json_path, md_path, *figures):
            tracking.log_artifact(p)
    return {
        "report": str(json_path),
        "markdown": str(md_path),
        "figures": figures,
        "results": report,
        "models": descriptions,
        "datasets": ds_meta,
        "dense": dense.section,
        "notes": notes,
    }


def _log_dense(section: dict[str, dict[str, Any]]) -> None:
    for name, per_ds in section.items():
        for ds, entry in per_ds.items():
            tracking.log_metrics({f"{ds}.{name}.{k}": v for k, v in entry.items() if isinstance(v, float)})


def _figures(
    ev: EvaluateConfig,
    split: EvalSplit,
    models: dict[str, torch.nn.Module],
    test_cls: dict[str, torch.Tensor],
    out_dir: Path,
    device: torch.device,
) -> list[str]:
    if ev.n_pca_images == 0:
        return []
    out = []
    labels = torch.as_tensor(split.test.labels)
    if test_cls:
        p = save_cls_map_png(
            out_dir / f"eval_cls_map_{split.name}.png",
            test_cls,
            labels,
            split.classes,
            title=f"{split.name}: CLS features (test split), PCA",
        )
        out.append(str(p))
    if models:
        idx = _pca_indices(np.asarray(split.test.labels), ev.n_pca_images)
        sub = split.test.subset(idx)
        images = list(sub.images)
        rgb = {
            name: pca_rgb(
                patch_tokens(m, sub.images, image_size=ev.image_size, resize_ratio=ev.resize_ratio, device=device)
            )
            for name, m in models.items()
        }
        p = save_patch_pca_png(
            out_dir / f"eval_patch_pca_{split.name}.png",
            images,
            rgb,
            title=f"{split.name}: patch features, first 3 PCA components as RGB",
        )
        out.append(str(p))
    return out
