"""Cost of a family of students: one distillation step with N students against N = 1, interleaved.

    python benchmarks/distill_students.py                      # the demo's shapes: vit_mini/7 → vit_pico/7
    python benchmarks/distill_students.py --students 3 --repeats 7

Features mode, as the demo distils (heads mode needs a pretraining output as its teacher). The
teacher (the demo's `vit_mini/7`, random weights: the cost does not depend on them) runs once a
step whatever the number of students; each student adds its own forward, backward, optimiser and EMA.
The step is the real one: the multi-crop augmentation of a batch of 64 uint8 28-px images (made in
the loop's process, as a CPU run does; shared by every student) and `train_step` on the objective
`dinoflow distill` builds. `--fixed-crops` leaves the augmentation out (one set of crops reused), which
only makes the ratio larger: it times the network part alone.
Each repetition times the one-student step and then the N-student step in the same process; the
figure is the median of the per-repetition ratios (the machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from step_timing import median_step_seconds

from dinoflow.config import DistillConfig
from dinoflow.models import build_backbone, export_backbone
from dinoflow.train.distill_family import FamilyObjective
from dinoflow.train.distill_objectives import FeatureDistillObjective, HeadDistillObjective

STUDENT = {"arch": "vit_pico", "patch_size": 7, "img_size": 28, "layerscale_init": 1.0}
CROPS = {"global_size": 28, "local_size": 14, "n_local": 4}


def _objective(teacher: Path, n: int, mode: str, device: torch.device):
    base = {"mode": mode, "teacher": str(teacher), "crops": CROPS, "seed": 0}
    if n == 1:
        cfg = DistillConfig(**base, student=STUDENT)
        cls = HeadDistillObjective if mode == "heads" else FeatureDistillObjective
        return cls(cfg, device), cfg
    cfg = DistillConfig(**base, students=[{**STUDENT, "name": f"s{i}"} for i in range(n)])
    return FamilyObjective(cfg, device), cfg


def _timed_steps(teacher: Path, n: int, mode: str, batch: int, steps: int, fixed_crops: bool = False) -> float:
    """Median seconds of a step (after one warm-up step)."""
    obj, cfg = _objective(teacher, n, mode, torch.device("cpu"))
    images = torch.randint(0, 256, (batch, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return median_step_seconds(obj, cfg.optim, images, steps, fixed_crops=fixed_crops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fixed-crops", action="store_true", help="time the network part alone (no augmentation)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        teacher = Path(tmp) / "teacher"
        export_backbone(build_backbone("vit_mini", patch_size=7, img_size=28, layerscale_init=1.0), teacher)
        ratios, ones, many = [], [], []
        for r in range(a.repeats):
            t1 = _timed_steps(teacher, 1, "features", a.batch, a.steps, a.fixed_crops)
            tn = _timed_steps(teacher, a.students, "features", a.batch, a.steps, a.fixed_crops)
            ones.append(t1)
            many.append(tn)
            ratios.append(tn / t1)
            print(
                f"repeat {r + 1}: 1 student {t1 * 1e3:.1f} ms, {a.students} students {tn * 1e3:.1f} ms: {tn / t1:.2f}x"
            )
        print(
            f"median step: 1 student {statistics.median(ones) * 1e3:.1f} ms, {a.students} students "
            f"{statistics.median(many) * 1e3:.1f} ms; median ratio {statistics.median(ratios):.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}); {a.students} separate runs would be {a.students}.00x"
        )


if __name__ == "__main__":
    main()
