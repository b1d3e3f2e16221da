"""`dinoflow demo` (what `make demo` runs): the whole pipeline on the built-in data, then a summary.

The stages run through `dvc repro` (so a second run with nothing changed does no work and just
prints the summary again); with `--no-dvc`, or where DVC cannot run (not a git checkout), they
run in this process in pipeline order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dinoflow import tracking
from dinoflow.config import ConfigError, load_config
from dinoflow.demo.truth import find_ground_truth, score_curation
from dinoflow.errors import DinoflowError
from dinoflow.stages import PIPELINE_ORDER, run_stage


def _dvc() -> str:
    """The dvc beside this Python, else the first on PATH; "" when there is none."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else shutil.which("dvc") or ""


def _can_use_dvc() -> bool:
    return (
        _dvc() != ""
        and Path("dvc.yaml").exists()
        and Path(".dvc").is_dir()
        and subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True).returncode == 0
    )


def _read(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def _pct(x: Any) -> str:
    return f"{100 * x:5.1f}" if isinstance(x, (int, float)) else "   — "


def registry_lines(reg: dict[str, Any]) -> list[str]:
    """registry.json → the gate's verdict, this version's URI and the champion's URI."""
    if not reg:
        return []
    gate = reg.get("gate") or {}
    lines = [
        f"registry gate: {'PASSED' if gate.get('passed') else 'NOT PASSED'}"
        + ("" if gate.get("passed") else "  " + "; ".join(gate.get("reasons") or []))
    ]
    if reg.get("version"):
        taken = "took the alias" if reg.get("took_alias") else "registered as a candidate"
        lines.append(f"  this run:  {reg.get('model_uri')}  ({taken})")
    champion = reg.get("champion_uri") or reg.get("alias_uri")
    if champion:
        lines.append(f"  champion:  {champion}  (version {reg.get('alias_version')})")
        lines.append(
            f"  use it:    dinoflow embed {champion} <images> -o embeddings.parquet   |   "
            f"mlflow models serve -m {champion} --env-manager local -p 5001"
        )
    elif reg.get("registered"):
        lines.append(f"  champion:  none yet (alias {reg.get('alias')!r} unset)")
    if reg.get("note"):
        lines.append(f"  note: {reg['note']}")
    return lines


def registry_mismatch(cfg) -> str | None:
    """Why the registry in use does not hold the version reports/registry.json names (None: it does).

    DVC reruns `register` only when its inputs change, and the tracking URI is not one of them: after
    MLFLOW_TRACKING_URI changes, registry.json still describes a version in the previous registry.
    """
    reg = _read(cfg.register.report)
    if not reg.get("registered") or not tracking.is_enabled(cfg):
        return None
    uri = tracking.tracking_uri(cfg)
    name, version = reg.get("model_name", ""), reg.get("version", "")
    said = f"{cfg.register.report} names version {version} of {name} in {reg.get('tracking_uri')}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return f"{said}, but the registry in use ({tracking.redact(uri)}) does not exist"
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.check_tracking_server(uri, cfg.tracking.probe_timeout_s)
    with tracking.named_errors("reading the model registry", uri):
        try:
            held = mlflow.MlflowClient(uri).get_model_version(name, version)
        except MlflowException as e:
            if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            return f"{said}, but the registry in use ({tracking.redact(uri)}) holds no such version"
    if held.source != f"models:/{reg.get('model_id')}":
        return f"{said}, but version {version} in the registry in use ({tracking.redact(uri)}) is another model"
    return None


def _demo_truth_score(cfg) -> dict[str, Any]:
    """The curated manifest scored against the planted truth (empty when either is missing)."""
    truth = find_ground_truth(list(cfg.curate.sources))
    if truth is None or not (Path(cfg.curate.out_dir) / "manifest.parquet").exists():
        return {}
    return score_curation(cfg.curate.out_dir, truth)


def summary(cfg) -> str:
    """The demo's result in a few lines, read back from the reports the stages wrote."""
    lines = ["", "=" * 72, "dinoflow demo — summary", "=" * 72]
    cur = _read(f"{cfg.curate.report_dir}/curation.json")
    funnel = cur.get("funnel")
    if funnel:
        lines.append("curation funnel (images remaining after each step):")
        items = funnel.items() if isinstance(funnel, dict) else [(f.get("step"), f.get("remaining")) for f in funnel]
        lines += [f"  {'after ' + str(k):<28} {v}" for k, v in items]
        gt = _demo_truth_score(cfg)
        if gt:
            lines.append(
                "  vs planted truth: "
                + ", ".join(
                    f"{k} {gt[k]:.3f}" if isinstance(gt[k], float) else f"{k} {gt[k]}"
                    for k in (
                        "duplicate_recall",
                        "duplicate_precision",
                        "junk_kept_fraction",
                        "corrupt_reported",
                        "corrupt_total",
                    )
                    if k in gt
                )
            )
    ev = {k: v for k, v in _read(f"{cfg.evaluate.report_dir}/eval.json").items() if not k.startswith("_")}
    if ev:
        datasets = sorted({d for m in ev.values() if isinstance(m, dict) for d in m})
        lines.append("frozen features (top-1 %, k-NN k=20 / linear probe):")
        lines.append("  " + f"{'model':<12}" + "".join(f"{d + ' knn':>13}{d + ' lin':>13}" for d in datasets))
        for model in ("teacher", "student", "random_init", "raw_pixels"):
            if model in ev:
                row = ev[model]
                lines.append(
                    "  "
                    + f"{model:<12}"
                    + "".join(
                        f"{_pct(row.get(d, {}).get('knn_top1')):>13}{_pct(row.get(d, {}).get('linear_top1')):>13}"
                        for d in datasets
                    )
                )
    lines += registry_lines(_read(cfg.register.report))
    lines += [
        "open the tracking UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then http://127.0.0.1:5000)",
        f"reports:  {cfg.curate.report_dir}/curation.html  {cfg.evaluate.report_dir}/eval.md  (+ PNGs beside them)",
        "=" * 72,
    ]
    return "\n".join(lines)


def _register_where_reported(cfg) -> int:
    """Rerun `register` when DVC skipped it but the registry in use lacks what registry.json reports."""
    try:
        stale = registry_mismatch(cfg)
        if stale is None:
            return 0
        print(f"{stale}: DVC kept `register` (its inputs did not change); registering again", flush=True)
        r = subprocess.run([_dvc(), "repro", "--force", "--single-item", "register"])
        stale = registry_mismatch(cfg) if r.returncode == 0 else "`dvc repro --force --single-item register` failed"
    except DinoflowError as e:
        stale = str(e)
    if stale is None:
        return 0
    print(f"dinoflow demo: {stale}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dinoflow demo", description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="params.yaml")
    p.add_argument("--no-dvc", action="store_true", help="run the stages in this process instead of `dvc repro`")
    p.add_argument("--force", action="store_true", help="rerun every stage even if DVC finds nothing changed")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"dinoflow demo: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    if not args.no_dvc and _can_use_dvc():
        cmd = [_dvc(), "repro"] + (["--force"] if args.force else [])
        print("running: dvc " + " ".join(cmd[1:]), flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            print("dinoflow demo: `dvc repro` failed (see the stage output above)", file=sys.stderr)
            return r.returncode
        code = _register_where_reported(cfg)
        if code:
            return code
    else:
        try:
            with tracking.pipeline_parent_run(cfg, name="demo"):
                for stage in PIPELINE_ORDER:
                    print(f"--- {stage}", flush=True)
                    run_stage(stage, cfg)
        except DinoflowError as e:
            print(f"dinoflow demo: {e}", file=sys.stderr)
            return 1
    print(summary(cfg))
    print(f"pipeline wall time: {time.time() - t0:.0f} s")
    return 0
