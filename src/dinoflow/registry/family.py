"""`dinoflow register` for one student or for a family of students.

A family (`distill.students`: `<register.model_path>/<name>/backbone.pth`) registers each student as
a model of its own, `<register.model_name>-<name>`, judged on its own eval.json entry
(`<register.student_key>-<name>`, the name `evaluate` gives it): floors against the same teacher
and baselines, and the challenge against that model's own champion. One registered model per
student rather than one model with the student in a tag: an alias names one version of one model,
and the consumers of a small and of a large student each want their own champion.
`reports/registry.json` then holds every student's record under `students`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinoflow.config import Config
from dinoflow.io import atomic_write_json
from dinoflow.models.family import student_folders
from dinoflow.registry.stage import register as register_one


def member_config(cfg: Config, name: str, folder: Path) -> Config:
    """The register settings of student `name`: its folder, eval.json entry, model name and report."""
    rc = cfg.register
    report = Path(rc.report)
    member = rc.model_copy(
        update={
            "model_path": str(folder),
            "student_key": f"{rc.student_key}-{name}",
            "model_name": f"{rc.model_name}-{name}",
            "report": str(report.with_name(f"{report.stem}-{name}{report.suffix}")),
        }
    )
    return cfg.model_copy(update={"register": member})


def register(cfg: Config) -> dict[str, Any]:
    """Register the student, or every student of a family (one after another; each is its own model)."""
    members = student_folders(cfg.register.model_path)
    if not members:
        return register_one(cfg)
    results = {name: register_one(member_config(cfg, name, folder)) for name, folder in members.items()}
    combined = {"model_name": cfg.register.model_name, "students": results}
    atomic_write_json(cfg.register.report, combined)
    return combined
