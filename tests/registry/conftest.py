"""A registered champion on the session's MLflow server, for the serving and fresh-environment tests."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

from dinoflow.config import load_config
from dinoflow.digest import file_sha256
from dinoflow.models import build_backbone, export_backbone


@dataclass
class RegisteredChampion:
    name: str
    uri: str  # models:/<name>@champion
    tracking_uri: str
    student: torch.nn.Module
    workdir: Path


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mlflow_server) -> Iterator[RegisteredChampion]:
    from dinoflow.registry import register

    work = tmp_path_factory.mktemp("champion")
    before = os.getcwd()
    os.chdir(work)  # the tracking state file and reports stay in the temporary directory
    try:
        torch.manual_seed(1)
        student = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
        pth = export_backbone(student, work / "models" / "student" / "backbone.pth")
        entry = lambda v: {"mnist": {"knn_top1": v}}  # noqa: E731
        (work / "eval.json").write_text(
            json.dumps(
                {
                    "student": entry(0.8),
                    "teacher": entry(0.81),
                    "random_init": entry(0.5),
                    "_provenance": {
                        "models": {"student": {"path": str(pth), "sha256": file_sha256(pth)}},
                        "datasets": {"mnist": {"fingerprint": "c" * 64}},
                    },
                }
            )
        )
        name = f"dinoflow-serve-{time.time_ns()}"
        cfg = load_config(
            None,
            [
                f"tracking.tracking_uri={mlflow_server.uri}",
                "tracking.system_metrics=false",
                "tracking.experiment=serving",
                f"register.model_name={name}",
                f"register.model_path={pth.parent}",
                f"register.eval_report={work}/eval.json",
                f"register.report={work}/registry.json",
                "register.teacher_path=null",
                "register.onnx.enabled=false",
                "evaluate.image_size=28",
                "evaluate.resize_ratio=1.0",
            ],
        )
        result = register(cfg)
        assert result["took_alias"], result["gate"]
        yield RegisteredChampion(name, f"models:/{name}@champion", mlflow_server.uri, student, work)
    finally:
        os.chdir(before)
