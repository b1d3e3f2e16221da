"""The model card: a registered version's description (Markdown) — what the model is, what it was
trained on, how it scored next to its teacher and the baselines, and the gate's verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dinoflow.models.artifact import BackboneArtifact
from dinoflow.registry.dense_gate import dense_table
from dinoflow.registry.gate import Verdict

MODEL_ORDER = ("student", "teacher", "random_init", "raw_pixels")


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}"


def training_summary(folder: Path) -> dict[str, Any]:
    """What train_config.yaml in the weights' folder says (data, teacher, mode, steps, architecture); {} when absent."""
    path = folder / "train_config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    train = cfg.get("train") or {}
    steps = train.get("max_steps") or (train.get("epochs") or 0) * (train.get("epoch_length") or 0) or None
    arch = cfg.get("student") or cfg.get("model") or {}
    return {
        "data": cfg.get("data"),
        "teacher": cfg.get("teacher"),
        "mode": cfg.get("mode"),
        "steps": steps,
        "batch": train.get("batch_size_per_rank"),
        "arch": arch.get("arch"),
        "patch_size": arch.get("patch_size"),
    }


def _results_table(models: dict[str, Any]) -> list[str]:
    datasets = list(dict.fromkeys(d for per in models.values() for d in per))
    head = ["model"] + [f"{d} {m}" for d in datasets for m in ("k-NN", "linear", "logreg")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = [m for m in MODEL_ORDER if m in models] + [m for m in models if m not in MODEL_ORDER]
    for name in names:
        cells = []
        for d in datasets:
            e = models[name].get(d) or {}
            cells += [_pct(e.get("knn_top1")), _pct(e.get("linear_top1")), _pct(e.get("logreg_top1"))]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def model_card(
    name: str,
    version: str,
    artifact: BackboneArtifact,
    models: dict[str, Any],
    verdict: Verdict,
    lineage: dict[str, Any],
    dense: dict[str, Any] | None = None,
) -> str:
    """Markdown for the version description; `dense` is eval.json's `_dense` section, when evaluated."""
    t = training_summary(artifact.folder)
    backbone = artifact.load()
    params = sum(p.numel() for p in backbone.parameters())
    mc = getattr(backbone, "config", None)
    arch = f"{getattr(mc, 'arch', None) or t.get('arch') or type(backbone).__name__}/{getattr(backbone, 'patch_size', '?')}"
    lines = [f"# {name} v{version}: {arch}, {params:,} parameters, embedding dim {backbone.embed_dim}", ""]
    lines += [
        '**Use**: `mlflow.pyfunc.load_model("models:/' + name + '@champion").predict(images)` — PNG/JPEG bytes '
        "or base64 text, or uint8 arrays → L2-normalised CLS embeddings; "
        "`dinoflow embed models:/" + name + f"/{version} <images> -o out.parquet`; ONNX in artifact `onnx/`.",
        "",
    ]
    lines += ["## Training", ""]
    trained = [f"- data: `{t['data']}`" if t.get("data") else "- data: not recorded (no train_config.yaml)"]
    if t.get("teacher"):
        trained.append(f"- distilled from `{t['teacher']}` ({t.get('mode') or 'heads'} mode)")
    if t.get("steps"):
        trained.append(f"- {t['steps']} steps of {t.get('batch') or '?'} images per rank")
    for key, value in sorted((lineage.get("data_hashes") or {}).items()):
        trained.append(f"- DVC md5 of `{key}`: `{value}`")
    trained.append(
        f"- training run: `{lineage.get('training_run_id') or 'unknown'}` ({lineage.get('training_run_found')})"
    )
    trained.append(f"- weights sha256 `{lineage.get('sha256')}`; commit `{lineage.get('commit') or 'unknown'}`")
    lines += trained + ["", "## Frozen-feature evaluation (top-1 %)", ""] + _results_table(models) + [""]
    if table := dense_table(dense or {}, MODEL_ORDER):
        lines += ["## Dense evaluation (linear probes on frozen patch tokens)", ""] + table + [""]
    lines += ["## Gate", ""]
    champion = verdict.champion
    vs = f"champion v{champion.version} ({_pct(champion.knn_top1)}%)" if champion else "no champion yet"
    state = "passed — took the alias" if verdict.passed else "not passed — the alias stays"
    lines.append(f"{state}; k-NN {_pct(verdict.numbers['knn_top1'])}% on {verdict.dataset}, compared with {vs}.")
    lines += [f"- {r}" for r in verdict.reasons]
    return "\n".join(lines) + "\n"
