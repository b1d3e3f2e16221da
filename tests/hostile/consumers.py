"""Every stage that reads a folder of files, as a function `folder, work dir -> Outcome`.

- curate: the real `dinoflow curate` CLI entry (in this process), tracking off, no seeds / eval sets;
  the outcome carries the manifest rows and curation.json.
- pretrain: the training stream's folder reader (`pretrain.data` = a folder), one epoch.
- evaluate: the `folder` evaluation dataset kind (train/ and test/ splits, a class per subfolder).
- embed: the real `dinoflow embed` CLI entry over the folder (a tiny backbone, 28 px); the outcome
  carries its rows and skipped list.

Also runnable as a script (`python consumers.py <consumer> <folder> <work>` prints the Outcome as
JSON) so a case can run as another user or under a time limit.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


@dataclass
class Outcome:
    code: int | None = None  # CLI exit code (curate) or None
    error: str = ""  # the message of a named error, or a raw exception's type and text
    error_type: str = ""  # DinoflowError, ConfigError, or the raw exception's type
    seconds: float = 0.0
    manifest: dict[str, list[str]] = field(default_factory=dict)  # curate: uid -> [status, detail]
    report: dict[str, Any] = field(default_factory=dict)  # curate: curation.json
    used: int = 0  # pretrain: samples yielded in epoch 0; evaluate: images loaded
    skipped: int = 0  # pretrain: samples counted as skipped

    def mentions(self, name: str) -> bool:
        """Does the manifest or the report say anything about `name` (a relative path)?"""
        text = json.dumps(self.report, ensure_ascii=False)
        return any(name in uid for uid in self.manifest) or name in text or json.dumps(name)[1:-1] in text


def _curate_params(folder: Path, work: Path) -> Path:
    params = {
        "curate": {
            "sources": [str(folder)],
            "seeds": None,
            "eval_sets": [],
            "out_dir": str(work / "curated"),
            "report_dir": str(work / "reports"),
            "retrieval": "none",
            "kmeans_levels": [4],
            "embed_size": 28,
            "max_side": 28,
            "report_images": 2,
        },
        "tracking": {"enabled": False},
    }
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_curate(folder: Path, work: Path) -> Outcome:
    from dinoflow.cli import main

    work.mkdir(parents=True, exist_ok=True)
    params = _curate_params(folder, work)
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["curate", "-c", str(params)])
        except BaseException as e:  # noqa: BLE001 - a raw exception is an outcome the tests judge
            return Outcome(None, f"{type(e).__name__}: {e}", type(e).__name__, time.perf_counter() - t0)
    out = Outcome(
        code,
        err.getvalue().strip().splitlines()[-1] if code else "",
        "DinoflowError" if code else "",
        time.perf_counter() - t0,
    )
    manifest = work / "curated" / "manifest.parquet"
    if manifest.exists():
        import pyarrow.parquet as pq

        t = pq.read_table(manifest).to_pydict()
        out.manifest = {u: [s, d] for u, s, d in zip(t["uid"], t["status"], t["detail"])}
    report = work / "reports" / "curation.json"
    if report.exists():
        out.report = json.loads(report.read_text())
    return out


def run_pretrain_reader(folder: Path, work: Path) -> Outcome:
    """One epoch of the training stream over `folder` (decoded samples and the skip count)."""
    from dinoflow.errors import DinoflowError
    from dinoflow.train.data import TrainStream

    t0 = time.perf_counter()
    out = Outcome()
    try:
        for sample in TrainStream(str(folder), load_size=28, seed=0, batch_size=1):
            out.skipped += int(sample["skipped"])
            if sample["epoch"] != 0:
                break  # its skip count still belongs to epoch 0's tail
            out.used += 1
    except DinoflowError as e:
        out.error, out.error_type = str(e), "DinoflowError"
    except Exception as e:  # noqa: BLE001 - a raw exception is an outcome the tests judge
        out.error, out.error_type = f"{type(e).__name__}: {e}", type(e).__name__
    out.seconds = time.perf_counter() - t0
    return out


def run_evaluate_folder(folder: Path, work: Path) -> Outcome:
    """`folder` holds train/<class>/… and test/<class>/…: load it as an `evaluate.datasets` entry."""
    from dinoflow.config import EvalDataset
    from dinoflow.errors import DinoflowError
    from dinoflow.evaluation.datasets import load_eval_dataset

    t0 = time.perf_counter()
    out = Outcome()
    try:
        ds = EvalDataset(name="hostile", kind="folder", train=str(folder / "train"), test=str(folder / "test"))
        split = load_eval_dataset(ds)
        out.used = len(split.train) + len(split.test)
    except DinoflowError as e:
        out.error, out.error_type = str(e), "DinoflowError"
    except Exception as e:  # noqa: BLE001
        out.error, out.error_type = f"{type(e).__name__}: {e}", type(e).__name__
    out.seconds = time.perf_counter() - t0
    return out


def run_embed(folder: Path, work: Path) -> Outcome:
    """The real `dinoflow embed` CLI entry (in this process) with a tiny backbone, at 28 px; the
    outcome's manifest holds every row (`embedded`) and skipped image (`skipped`, the reason)."""
    import torch

    from dinoflow.cli import main
    from dinoflow.models import build_backbone, export_backbone

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pth = export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28), work / "model" / "backbone.pth")
    out = work / "embeddings.parquet"
    params = work / "params.yaml"
    params.write_text("{}\n")  # the defaults (the serving bounds among them)
    err, stdout = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    args = [
        "embed",
        str(pth),
        str(folder),
        "-o",
        str(out),
        "--image-size",
        "28",
        "--resize-ratio",
        "1",
        "--no-progress",
    ]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        try:
            code = main([*args, "-c", str(params)])
        except BaseException as e:  # noqa: BLE001 - a raw exception is an outcome the tests judge
            return Outcome(None, f"{type(e).__name__}: {e}", type(e).__name__, time.perf_counter() - t0)
    result = Outcome(code, err.getvalue().strip()[-2000:] if code else "", "DinoflowError" if code else "")
    result.seconds = time.perf_counter() - t0
    if out.exists():
        from dinoflow.embedding.parts import read_embeddings

        result.manifest = {u: ["embedded", ""] for u in read_embeddings(out)[0]}
    skipped = work / "embeddings.skipped.json"
    if skipped.exists():
        result.manifest.update({s["uid"]: ["skipped", s["reason"]] for s in json.loads(skipped.read_text())})
    if code == 0:
        result.report = json.loads(stdout.getvalue())
    return result


EMBED_CONSUMER: Callable[[Path, Path], Outcome] | None = run_embed

CONSUMERS: dict[str, Callable[[Path, Path], Outcome]] = {
    "curate": run_curate,
    "pretrain": run_pretrain_reader,
    "evaluate": run_evaluate_folder,
    **({"embed": EMBED_CONSUMER} if EMBED_CONSUMER is not None else {}),
}


def layout(
    root: Path, case_make: Callable[[Path], None], name: str, good: Callable[[Path, int, int], Any]
) -> dict[str, Path]:
    """The folders each consumer reads for one case under `root`: {consumer: folder}.

    pool/ (curate, pretrain, embed): the case beside 2 good images; eval/: train/a holds the case.
    """
    pool, ev = root / "pool", root / "eval"
    good(pool, 2, 100)
    case_make(pool / name)
    good(ev / "train" / "a", 1, 110)
    good(ev / "train" / "b", 1, 111)
    good(ev / "test" / "a", 1, 112)
    good(ev / "test" / "b", 1, 113)
    case_make(ev / "train" / "a" / name)
    return {c: ev if c == "evaluate" else pool for c in CONSUMERS}


def run_all(folders: dict[str, Path], work: Path) -> dict[str, Outcome]:
    return {c: CONSUMERS[c](folder, work / c) for c, folder in folders.items()}


if __name__ == "__main__":
    # python consumers.py <folders as JSON {consumer: path}> <work dir>  → {consumer: Outcome} as JSON
    folders = {k: Path(v) for k, v in json.loads(sys.argv[1]).items()}
    print(json.dumps({c: asdict(o) for c, o in run_all(folders, Path(sys.argv[2])).items()}))
