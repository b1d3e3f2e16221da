"""A DVC project whose one stage is `dinoflow register` of a committed student and its eval.json
(for tests of what happens around register under the real dvc CLI, without the whole pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from dinoflow.digest import file_sha256
from dinoflow.models import build_backbone, export_backbone

GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def register_project(repo: Path) -> None:
    """A DVC project whose one stage is `dinoflow register` of a committed student and eval.json."""
    repo.mkdir()
    torch.manual_seed(0)
    pth = export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28), repo / "models" / "student")
    entry = lambda v: {"mnist": {"knn_top1": v}}  # noqa: E731
    (repo / "reports").mkdir()
    report = {
        "student": entry(0.7),
        "teacher": entry(0.71),
        "random_init": entry(0.2),
        "_provenance": {
            "models": {"student": {"path": "models/student/backbone.pth", "sha256": file_sha256(pth)}},
            "datasets": {"mnist": {"fingerprint": "d" * 64}},
        },
    }
    (repo / "reports" / "eval.json").write_text(json.dumps(report))
    params = {
        "tracking": {"system_metrics": False},
        "register": {"teacher_path": None, "onnx": {"enabled": False}, "champion_tolerance": 0.0},
        "evaluate": {"image_size": 28, "resize_ratio": 1.0},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {
        "cmd": "dinoflow register",
        "deps": ["models/student", "reports/eval.json"],
        "params": ["register"],
        "metrics": [{"reports/registry.json": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"register": stage}}))
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
