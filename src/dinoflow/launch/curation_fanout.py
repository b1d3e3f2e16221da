"""Curation as a Kubeflow fan-out: decode + embed in parallel tasks, then the global steps in one.

`pipelines/curation_fanout.py` wires these, as the main DAG's curate: `fanout_groups` (how many
tasks), `embed_group` in a ParallelFor (task g decodes and embeds every partition p with
p % groups == g, of the pool, the seeds and the eval sets, into its own output), then
`gather_embeddings` puts every task's embedding shards into one work directory and the `curate`
stage runs on it (in the step, under torchrun, or as a TrainJob): it lists the inputs again,
reuses every partition whose key matches (any partition that changed or is missing is embedded
there), and runs the global steps. The output is the one `dinoflow curate` gives alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from dinoflow.config import Config
from dinoflow.curation.ingest import decode_settings, ingest_partitions
from dinoflow.curation.partitions import plan_partitions
from dinoflow.curation.pipeline import check_inputs, make_embedder, make_plans
from dinoflow.errors import DinoflowError
from dinoflow.launch.training import run_training_step


def fanout_groups(cfg: Config, max_groups: int) -> list[int]:
    """The task indices of the fan-out: one per group of pool partitions, at most `max_groups`."""
    if max_groups < 1:
        raise DinoflowError(f"the curation fan-out needs max_groups >= 1, got {max_groups}")
    check_inputs(cfg.curate)

    n = len(plan_partitions("pool", list(cfg.curate.sources), cfg.curate.chunk_size, "").partitions)
    return list(range(max(1, min(max_groups, n))))


def embed_group(cfg: Config, group: int, groups: int, work_dir: str | Path) -> dict[str, Any]:
    """Decode + embed the partitions p (pool, seeds, eval sets) with p % groups == group into `work_dir`."""
    group, groups = int(group), int(groups)  # KFP may hand list items over as floats
    if not 0 <= group < groups:
        raise DinoflowError(f"fan-out task {group} is not one of {groups} groups")
    c = cfg.curate
    check_inputs(c)
    embedder = make_embedder(c)
    plans = make_plans(c, decode_settings(c, embedder.identity()))
    mine = [p for plan in plans.values() for p in plan.partitions if p.index % groups == group]
    got = ingest_partitions(mine, c, embedder, Path(work_dir), workers=c.workers)
    return {"group": group, "groups": groups, **got}


def gather_embeddings(dirs: Sequence[str | Path], work_dir: str | Path) -> int:
    """Link (or copy) every task's embedding shards into `<work_dir>/parts`; returns how many files."""
    dest = Path(work_dir) / "parts"
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for d in dirs:
        for f in sorted((Path(d) / "parts").glob("*")):
            if f.name.startswith(".") or not f.is_file():
                continue  # a temp file of a writer that did not finish
            target = dest / f.name
            if not target.exists():
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copyfile(f, target)
            n += 1
    return n


def run_global_step(
    params_yaml: str,
    overrides: Sequence[str],
    embedding_dirs: Sequence[str],
    *,
    out_dir: str,
    report_dir: str,
    opts: Any,
) -> dict[str, Any]:
    """The fan-out's last task: gather the tasks' embedding shards, then run `curate` with them as its
    work directory — in this process, under torchrun, or as a TrainJob (`opts`, a LaunchOptions).
    Returns the report's summary (kept, dropped, funnel, seconds)."""

    with tempfile.TemporaryDirectory(prefix="dinoflow-curate-work-") as work:
        gather_embeddings(embedding_dirs, work)
        run_training_step(
            "curate",
            params_yaml,
            overrides,
            inputs={"curate.work_dir": work},
            outputs={"curate.out_dir": out_dir, "curate.report_dir": report_dir},
            opts=opts,
        )
    report = json.loads((Path(report_dir) / "curation.json").read_text())
    return {
        k: report[k]
        for k in ("kept", "dropped", "funnel", "seconds", "embedding_shards", "shards_reused")
        if k in report
    }
