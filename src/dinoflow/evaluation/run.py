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
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dinoflow import tracking
from dinoflow.config import Config, EvaluateConfig, stage_seed
from dinoflow.digest import arrays_sha256
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.candidates import RANDOM_INIT, RAW_PIXELS, Candidate, baselines, random_init_reference, trained
from dinoflow.evaluation.datasets import EvalSplit, load_eval_dataset
from dinoflow.evaluation.dense_run import evaluate_dense, is_dense
from dinoflow.evaluation.features import FeatureSet, patch_tokens, resolve_device
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
from dinoflow.evaluation.results import CandidateResult, EvalSet, dataset_sizes, descriptions, provenance, results_table
from dinoflow.models.artifact import BackboneArtifact, BackboneNotFound
from dinoflow.models.family import student_folders

log = logging.getLogger(__name__)


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


def open_trained(artifacts: Mapping[str, BackboneArtifact]) -> list[Candidate]:
    """The model files as candidates: each hashed before it is loaded, so the record names the bytes
    this run evaluated."""
    digests = {name: a.sha256() for name, a in artifacts.items()}
    return [trained(name, a.load(), a.path, digests[name]) for name, a in artifacts.items()]


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
    ev: EvaluateConfig,
    train: FeatureSet,
    test: FeatureSet,
    num_classes: int,
    notes: list[str],
    where: tuple[str, str],
    started: float,
) -> CandidateResult:
    """k-NN, linear probe and logistic regression of candidate `where[0]` on set `where[1]`."""
    tag = "/".join(where)
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
        seed=stage_seed(ev.seed),
    )
    notes += [f"{tag}: linear probe: {n}" for n in lin.notes]
    lr = logreg_probe(
        train.cls,
        train.labels,
        test.cls,
        test.labels,
        cs=ev.logreg_cs,
        val_fraction=ev.val_fraction,
        seed=stage_seed(ev.seed),
        max_iter=ev.logreg_max_iter,
    )
    notes += [f"{tag}: logreg: {n}" for n in lr.notes]
    entry = eval_entry(knn, lin.test_top1, lin.best.as_dict(), lr.test_top1)
    res = CandidateResult.from_entry(*where, entry, seconds=time.perf_counter() - started)
    log.info(
        "%s: k-NN %.3f, linear %.3f, logreg %.3f (C=%g), %.1f s",
        tag,
        res.knn_top1,
        lin.test_top1,
        lr.test_top1,
        lr.best_c,
        res.seconds,
    )
    return res


def _evaluate_set(
    ev: EvaluateConfig, split: EvalSplit, candidates: Sequence[Candidate], notes: list[str], device: torch.device
) -> tuple[list[CandidateResult], dict[str, torch.Tensor]]:
    """Every candidate on one classification set: the results, and each one's test CLS features [N, D]."""
    n_blocks = max(ev.linear_n_last_blocks)
    results, test_cls = [], {}
    for c in candidates:
        started = time.perf_counter()
        tr, te = (
            c.features(
                data.images,
                data.labels,
                ev,
                n_last_blocks=n_blocks,
                device=device,
                desc=f"{split.name}/{c.name}/{part}",
            )
            for part, data in (("train", split.train), ("test", split.test))
        )
        results.append(_evaluate_features(ev, tr, te, split.num_classes, notes, (c.name, split.name), started))
        test_cls[c.name] = te.cls
    return results, test_cls


def evaluate(cfg: Config) -> dict[str, Any]:
    """Run the evaluation stage; returns a JSON-able summary (the report, paths, notes)."""
    ev = cfg.evaluate
    artifacts = check_model_files(cfg)
    random_init_reference(ev, list(artifacts))  # a wrong `random_init_like` fails before any model loads
    device = resolve_device(ev.device)
    out_dir = Path(ev.report_dir)
    sets: list[EvalSet] = []
    results: list[CandidateResult] = []
    figures: list[str] = []

    with tracking.stage_run("evaluate", cfg):
        candidates = open_trained(artifacts)
        extra, notes = baselines(ev, candidates)
        candidates += extra
        for ds in (d for d in ev.datasets if not is_dense(d)):
            split: EvalSplit = load_eval_dataset(
                ds, seed=stage_seed(ev.seed), max_train=ev.max_train, max_test=ev.max_test
            )
            sets.append(
                EvalSet(ds.name, len(split.train), len(split.test), split.num_classes, eval_set_fingerprint(split, ev))
            )
            found, test_cls = _evaluate_set(ev, split, candidates, notes, device)
            for r in found:
                tracking.log_metrics(r.metrics())
            results += found
            figures += _figures(ev, split, candidates, test_cls, out_dir, device)

        dense = evaluate_dense(ev, candidates, device, out_dir)
        _log_dense(dense.section)
        figures += dense.figures
        notes = list(dict.fromkeys(notes))
        report = results_table(results)
        prov = provenance(candidates, sets, dense.datasets)
        json_path = write_eval_json(out_dir / "eval.json", report, prov, dense.section)
        meta = {"notes": notes, "models": descriptions(candidates), "datasets": dataset_sizes(sets), "figures": figures}
        md_path = write_markdown(out_dir / "eval.md", report, {**meta, "dense_datasets": dense.datasets}, dense.section)
        outputs: list[str | Path] = [json_path, md_path, *figures]
        for p in outputs:
            tracking.log_artifact(p)
    return {
        "report": str(json_path),
        "markdown": str(md_path),
        "figures": figures,
        "results": report,
        "models": meta["models"],
        "datasets": meta["datasets"],
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
    candidates: Sequence[Candidate],
    test_cls: dict[str, torch.Tensor],
    out_dir: Path,
    device: torch.device,
) -> list[str]:
    """The CLS-feature map of every candidate and the patch-feature PCA of every backbone, on one set."""
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
    models = {c.name: c.backbone for c in candidates if c.backbone is not None}
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
