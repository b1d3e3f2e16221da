"""Several students from one teacher pass per batch (DINOv3's multi-student distillation, on one device).

The teacher's forward is the dominant cost of distillation; a family of students shares it. Each
student keeps everything of its own: its targets (its grid, its loss centres), its heads, its EMA,
its gradient clipping (every student's modules are separate `param_modules`), its checkpoint state
and its export `<distill.out_dir>/<name>/`. All students train in one optimiser: AdamW is
element-wise, so one optimiser over disjoint parameter groups steps each student exactly as its
own optimiser would, and one checkpoint holds every student (they resume together, exactly).

On one device the students run one after another on the shared teacher outputs, in one forward
call of the family module (DDP / FSDP2 see one forward and one backward per step). Placing the
students on separate ranks is not done: every rank trains every student on its share of the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from dinoflow.config import DistillConfig, stage_seed
from dinoflow.models.wrappers import unwrap
from dinoflow.train.distill_objectives import FeatureDistillObjective, HeadDistillObjective
from dinoflow.train.objective import Batch, Schedule, TrainModule, backbones_of

SEP = "__"  # between a student's name and its own state keys (names may not contain it ambiguously)


class StudentFamily(nn.Module):
    """Students by name; `forward` runs each on its own arguments and returns their outputs by name."""

    def __init__(self, students: dict[str, nn.Module]):
        super().__init__()
        self.students = nn.ModuleDict(students)

    def forward(self, calls: dict[str, tuple[tuple, dict[str, Any]]]) -> dict[str, Any]:
        return {name: self.students[name](*args, **kwargs) for name, (args, kwargs) in calls.items()}

    def backbones(self) -> dict[str, nn.Module]:
        """Each student's backbone under its `param_modules` name (`<student>.backbone`)."""
        return {f"{n}.{k}": b for n, s in self.students.items() for k, b in backbones_of(s).items()}

    def param_modules(self) -> dict[str, nn.Module]:
        return {
            f"{n}.{k}": m for n, s in self.students.items() for k, m in cast(TrainModule, s).param_modules().items()
        }


def member_configs(cfg: DistillConfig) -> dict[str, DistillConfig]:
    """One single-student config per `distill.students` entry; student i initialises from seed + i
    (the stage's seed, resolved from the top-level one when the config is loaded)."""
    out = {}
    for i, st in enumerate(cfg.students):
        model = st.model_dump(exclude={"name"})
        out[st.name] = cfg.model_copy(
            update={"students": [], "student": type(cfg.student)(**model), "seed": stage_seed(cfg.seed) + i}
        )
    return out


class FamilyObjective:
    """The `Objective` of a family: one teacher pass, each student's targets, one forward, summed losses."""

    def __init__(self, cfg: DistillConfig, device: torch.device):
        cls = HeadDistillObjective if cfg.mode == "heads" else FeatureDistillObjective
        self.members: dict[str, Any] = {}
        teacher: Any = None  # what the member class shares: a teacher SSLNet (heads) or backbone (features)
        for name, mcfg in member_configs(cfg).items():
            member = cls(mcfg, device, teacher)
            teacher = member.shared_teacher  # loaded once, shared by every student
            self.members[name] = member
        self.first = next(iter(self.members.values()))
        self.views = self.first.views  # one set of crops: the teacher's pass is shared
        self.family = StudentFamily({n: m.student for n, m in self.members.items()})
        self.family_ema = StudentFamily({n: m.student_ema for n, m in self.members.items()})

    def train_module(self) -> nn.Module:
        return self.family

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"student_ema": self.family_ema}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"{n}{SEP}{k}": v for n, m in self.members.items() for k, v in m.extra_state().items()}

    def loss(self, net: nn.Module, v: Batch, s: Schedule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum of the students' losses (their parameters are disjoint: each gets its own gradient);
        the metrics carry each student's loss and terms as `<name>.<term>`."""
        t = self.first.teacher_pass(v)
        targets = {n: m.targets(v, t, s) for n, m in self.members.items()}
        outs = net({n: m.student_inputs(v) for n, m in self.members.items()})
        total: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        for n, m in self.members.items():
            loss, terms = m.terms(outs[n], v, targets[n], s)
            total = loss if total is None else total + loss
            metrics[f"{n}.loss"] = loss.detach()
            metrics.update({f"{n}.{k}": x for k, x in terms.items()})
        assert total is not None
        return total, metrics

    def after_step(self, net: nn.Module, s: Schedule) -> None:
        base = cast(StudentFamily, unwrap(net))
        for n, m in self.members.items():
            m.update_ema(base.students[n])

    def export(self, out_dir: str | Path, is_main: bool = True) -> None:
        """Each student's EMA to `<out_dir>/<name>/` (backbone.pth + config.yaml). Collective under FSDP."""
        for n, m in self.members.items():
            m.export(Path(out_dir) / n, is_main)
