"""The README's demo results come from a measured run, never from hand edits.

`record` keeps a finished `make demo`'s numbers (reports/eval.json, reports/curation.json, the
curated manifest scored against the planted truth, the backbones' parameter counts) with the date
and commit in docs/demo-results.json; `render` writes README.md's demo-results block from that
file. tests/test_readme.py fails when the README's numbers and the record disagree by more than
TOLERANCE, so a new measurement reaches the README only through this script:

    make demo && python benchmarks/demo_results.py record && python benchmarks/demo_results.py render --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "demo-results.json"
README = ROOT / "README.md"
BEGIN = "<!-- demo-results:begin (generated: python benchmarks/demo_results.py render --write) -->"
END = "<!-- demo-results:end -->"
# accuracy points: the README shows one decimal, so rounding alone moves a number by up to 0.05
TOLERANCE = 0.05
MODELS = {
    "teacher": "teacher (`vit_mini/7`, pretrained)",
    "student": "student (`vit_pico/7`, distilled)",
    "random_init": "random init (`vit_mini/7`, LayerScale 1)",
    "raw_pixels": "raw pixels",
}
COLUMNS = [("mnist", "knn_top1"), ("mnist", "linear_top1"), ("digits", "knn_top1"), ("digits", "linear_top1")]
HEADER = "| model | params | MNIST k-NN (k 20) | MNIST linear | digits k-NN | digits linear |"
# the demo's dense sets (reports/eval.json `_dense`): each with its headline metric and its direction
DENSE = {"digit_mosaics": ("miou", "segmentation mIoU", "higher"), "digit_depth": ("rmse", "depth RMSE (m)", "lower")}
DENSE_TITLE = "Dense features"
TRUTH_KEYS = ("duplicate_recall", "duplicate_precision", "junk_kept_fraction", "corrupt_reported", "corrupt_total")


def _param_count(path: str) -> int:
    from dinoflow.models import load_backbone

    return sum(p.numel() for p in load_backbone(path).parameters())


def record(params: str = "params.yaml") -> dict[str, Any]:
    """The numbers of the run whose outputs `params` names (run from the checkout that ran it)."""
    from dinoflow.config import load_config
    from dinoflow.demo.truth import find_ground_truth, score_curation

    cfg = load_config(params)
    ev = json.loads((Path(cfg.evaluate.report_dir) / "eval.json").read_text())
    cur = json.loads((Path(cfg.curate.report_dir) / "curation.json").read_text())
    truth_file = find_ground_truth(list(cfg.curate.sources))
    if truth_file is None:
        raise SystemExit("no ground_truth.json beside curate.sources: record reads a demo run")
    truth = score_curation(cfg.curate.out_dir, truth_file)
    counts = {m: _param_count(p) for m, p in cfg.evaluate.models.items()}
    if "random_init" in ev and "teacher" in counts:  # the baseline copies the teacher's architecture
        counts["random_init"] = counts["teacher"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "measured": datetime.date.today().isoformat(),
        "commit": commit,
        "source": "make demo",
        "params": counts,
        "eval": {
            m: {ds: {key: ev[m][ds][key] for d, key in COLUMNS if d == ds} for ds in ("mnist", "digits")}
            for m in MODELS
            if m in ev
        },
        "dense": {
            m: {ds: {metric: per_ds[ds][metric]} for ds, (metric, _, _) in DENSE.items() if ds in per_ds}
            for m, per_ds in ev.get("_dense", {}).items()
        },
        "curation": {
            "inputs": cur["funnel"][0]["remaining"],
            "in_manifest": truth["manifest_uids"],
            "kept": cur["kept"],
            **{k: truth[k] for k in TRUTH_KEYS},
        },
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def teacher_beats_random_init(res: dict[str, Any]) -> dict[str, bool]:
    """Per dense set of the record: whether the teacher's headline number beats its random-init architecture's."""
    dense = res.get("dense", {})
    out = {}
    for ds, (metric, _, direction) in DENSE.items():
        if ds in dense.get("teacher", {}) and ds in dense.get("random_init", {}):
            t, r = dense["teacher"][ds][metric], dense["random_init"][ds][metric]
            out[ds] = t > r if direction == "higher" else t < r
    return out


def _dense_rows(res: dict[str, Any]) -> list[str]:
    dense = res.get("dense", {})
    sets = [ds for ds in DENSE if any(ds in per_ds for per_ds in dense.values())]
    if not sets:
        return []
    rows = [
        "",
        f"{DENSE_TITLE} (linear probes on frozen patch tokens; the demo's synthetic digit sets, docs/demo.md):",
        "",
        "| model | " + " | ".join(f"{ds} {DENSE[ds][1]} ({DENSE[ds][2]} is better)" for ds in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for m, label in MODELS.items():
        if m in dense:
            cells = [f"{dense[m][ds][DENSE[ds][0]]:.3f}" if ds in dense[m] else "—" for ds in sets]
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def render(res: dict[str, Any]) -> str:
    """README's demo-results block (markers included) for a record."""
    ev, c = res["eval"], res["curation"]
    rows = [HEADER, "|---|---|---|---|---|---|"]
    for m, label in MODELS.items():
        if m in ev:
            n = res["params"].get(m)
            cells = [_pct(ev[m][ds][key]) for ds, key in COLUMNS]
            rows.append(f"| {label} | {f'{n:,}' if n else '—'} | " + " | ".join(cells) + " |")
    t, s, r = (ev[m]["mnist"]["knn_top1"] for m in ("teacher", "student", "random_init"))
    # a record may carry a curation measured apart from the training (then it names its own run)
    cur_run = f" (measured {c['measured']} at commit `{c['commit']}`)" if "measured" in c else ""
    lines = [
        BEGIN,
        f"Measured {res['measured']} at commit `{res['commit']}` ({res['source']}; the record is "
        "`docs/demo-results.json`). Held-out MNIST (1,000 digits) and the digits transfer set, top-1:",
        "",
        *rows,
        *_dense_rows(res),
        "",
        f"- Curation{cur_run} against the planted truth: duplicate recall {c['duplicate_recall']:.3f}, precision "
        f"{c['duplicate_precision']:.3f}, junk kept {c['junk_kept_fraction']:.1f}, corrupt files reported "
        f"{c['corrupt_reported']} / {c['corrupt_total']}, {c['in_manifest']:,} of the {c['inputs']:,} inputs in "
        f"the manifest; {c['kept']:,} images kept.",
        f"- The teacher learns real structure (MNIST k-NN {_pct(r)}% at random init → {_pct(t)}%), "
        f"{100 * (t - r):+.1f} points, and the student keeps {100 * s / t:.1f}% of it with a fifth of the parameters.",
        END,
    ]
    return "\n".join(lines)


def block(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md lacks the demo-results block ({BEGIN} … {END})")
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def table(text: str) -> dict[str, list[float]]:
    """The accuracy cells of the block's table, by model key, in COLUMNS order (percent)."""
    return {m: [float(x) for x in cells[1:]] for m, cells in _model_rows(block(text).split(DENSE_TITLE)[0]).items()}


def _model_rows(text: str) -> dict[str, list[str]]:
    """The table rows of `text` whose first cell is a model's label: model key → the other cells."""
    by_label = {label: m for m, label in MODELS.items()}
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if cells and cells[0] in by_label:
            out[by_label[cells[0]]] = cells[1:]
    return out


def disagreements(text: str, res: dict[str, Any], tolerance: float = TOLERANCE) -> list[str]:
    """Where README's block differs from the record: accuracies beyond `tolerance` points, counts at all."""
    shown, problems = table(text), []
    for m in res["eval"]:
        want = [100 * res["eval"][m][ds][key] for ds, key in COLUMNS]
        got = shown.get(m)
        if got is None:
            problems.append(f"{m}: no row in README's table")
            continue
        problems += [
            f"{m} {ds} {key}: README {g} vs measured {w:.2f}"
            for (ds, key), g, w in zip(COLUMNS, got, want)
            if abs(g - w) > tolerance
        ]
    problems += _dense_disagreements(text, res)
    kept = re.search(r"([\d,]+) images kept", block(text))
    if kept is None or int(kept.group(1).replace(",", "")) != res["curation"]["kept"]:
        problems.append(f"curation kept: README {kept and kept.group(1)} vs measured {res['curation']['kept']}")
    return problems


def _dense_disagreements(text: str, res: dict[str, Any]) -> list[str]:
    """The dense table's cells against the record (3 decimals shown: half a unit of the last place)."""
    dense = res.get("dense", {})
    sets = [ds for ds in DENSE if any(ds in per_ds for per_ds in dense.values())]
    parts = block(text).split(DENSE_TITLE)
    shown = _model_rows(parts[1]) if len(parts) > 1 else {}
    problems = []
    for m, per_ds in dense.items():
        if m not in shown:
            problems.append(f"{m}: no row in README's dense table")
            continue
        for ds, cell in zip(sets, shown[m]):
            if ds in per_ds:
                want = per_ds[ds][DENSE[ds][0]]
                if cell == "—" or abs(float(cell) - want) > 0.0005 + 1e-9:
                    problems.append(f"{m} {ds}: README {cell} vs measured {want:.4f}")
    return problems


def write(readme: Path, res: dict[str, Any]) -> None:
    text = readme.read_text()
    old = block(text)
    readme.write_text(text.replace(old, render(res)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="keep this checkout's finished demo run in docs/demo-results.json")
    r.add_argument("-c", "--config", default="params.yaml")
    r.add_argument("-o", "--out", default=str(RESULTS))
    w = sub.add_parser("render", help="print README's block from the record (--write: replace it in README.md)")
    w.add_argument("--results", default=str(RESULTS))
    w.add_argument("--write", nargs="?", const=str(README), default=None, metavar="README")
    args = p.parse_args(argv)
    if args.cmd == "record":
        Path(args.out).write_text(json.dumps(record(args.config), indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    res = json.loads(Path(args.results).read_text())
    if args.write:
        write(Path(args.write), res)
    else:
        print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
