"""Cost of the demo's distillation step, and its ratio against another commit in one interleaved run.

    python benchmarks/distill_step.py                    # this tree: ms a step, images a second
    python benchmarks/distill_step.py --against HEAD~1   # this tree vs HEAD~1, alternating processes

The step is what `dinoflow distill` runs a step on a CPU: the views of a batch (made in the loop's
process) and `train_step` on the objective, with the `distill` section of each tree's own
params.yaml (crops, student, batch) and a random teacher of its `pretrain.model` (the cost does
not depend on the weights). Features mode only (heads mode needs a pretraining output).

With `--against`, the other commit is checked out in a temporary git worktree and each repetition
times one fresh process of each tree, in alternating order; the figure is the median of the
per-repetition ratios (the machines here are shared and noisy, so only a ratio from one
interleaved run means anything).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_step(root: Path, steps: int) -> dict[str, float]:
    """Median seconds of the distill step of `root`'s params.yaml (after two warm-up steps)."""
    import torch
    from step_timing import median_step_seconds

    import dinoflow
    from dinoflow.config import load_config
    from dinoflow.models import build_backbone, export_backbone
    from dinoflow.train.distill_objectives import FeatureDistillObjective

    if not Path(dinoflow.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"imported dinoflow from {dinoflow.__file__}, not from {root}")
    cfg = load_config(str(root / "params.yaml"))
    dc, tm = cfg.distill, cfg.pretrain.model
    if dc.mode != "features":
        raise SystemExit(f"{root}/params.yaml distils in mode {dc.mode}; this benchmark times mode features")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        teacher = build_backbone(tm.arch, patch_size=tm.patch_size, img_size=tm.img_size, layerscale_init=1.0)
        export_backbone(teacher, Path(tmp) / "teacher")
        obj = FeatureDistillObjective(
            dc.model_copy(update={"teacher": str(Path(tmp) / "teacher"), "seed": 0}), torch.device("cpu")
        )
        batch, side = dc.train.batch_size_per_rank, dc.crops.global_size
        images = torch.randint(
            0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        sec = median_step_seconds(obj, dc.optim, images, steps, warmup=2)
    return {"step_ms": sec * 1e3, "img_s": batch / sec}


def _in_process(root: Path, steps: int) -> dict[str, float]:
    """time_step in a fresh interpreter that imports `root`'s dinoflow."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    cmd = [sys.executable, __file__, "--child", str(root), "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"timing {root} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def against(rev: str, steps: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), rev], check=True)
        try:
            ratios, here_ms, there_ms = [], [], []
            for r in range(repeats):
                order = [ROOT, other] if r % 2 == 0 else [other, ROOT]
                got = {root: _in_process(root, steps) for root in order}
                here, there = got[ROOT]["step_ms"], got[other]["step_ms"]
                here_ms.append(here)
                there_ms.append(there)
                ratios.append(there / here)
                print(f"repeat {r + 1}: {rev} {there:.1f} ms, this tree {here:.1f} ms: {there / here:.2f}x", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    print(
        f"median step: {rev} {statistics.median(there_ms):.1f} ms, this tree {statistics.median(here_ms):.1f} ms; "
        f"this tree is {statistics.median(ratios):.2f}x faster a step (range {min(ratios):.2f}-{max(ratios):.2f}, "
        f"{repeats} interleaved repetitions)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="a commit to compare with, interleaved")
    ap.add_argument("--steps", type=int, default=15, help="timed steps a process (after two warm-up steps)")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--child", metavar="ROOT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(time_step(Path(a.child), a.steps)))
    elif a.against:
        against(a.against, a.steps, a.repeats)
    else:
        res = time_step(ROOT, a.steps)
        print(f"distill step: {res['step_ms']:.1f} ms, {res['img_s']:.0f} images/s")


if __name__ == "__main__":
    main()
