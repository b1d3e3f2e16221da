"""One version: `dinoflow.__version__`. pyproject.toml reads it (dynamic) and the image tags derive
from it in code; the k8s/ manifests and the docker/ build comments cannot import it, so they are
checked here."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import tomllib

import dinoflow
from dinoflow.launch import images

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TAG = re.compile(r"\b(dinoflow/dinoflow-(?:cpu|cuda)):([\w.+-]+)")


def test_pyproject_reads_the_package_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dinoflow.__version__"}
    assert version("dinoflow") == dinoflow.__version__  # the installed metadata (rerun `make install` after a bump)


def test_every_image_tag_outside_the_code_names_the_version():
    files = [p for d in ("k8s", "docker") for p in (ROOT / d).rglob("*") if p.is_file()]
    tags = {
        (str(p.relative_to(ROOT)), m.group(0)) for p in files for m in IMAGE_TAG.finditer(p.read_text(errors="replace"))
    }
    assert len(tags) >= 4, (
        "the manifests and Dockerfiles name the images (a pattern that matches nothing checks nothing)"
    )
    wrong = {(f, t) for f, t in tags if t.split(":")[1] != dinoflow.__version__}
    assert not wrong, f"image tags that are not version {dinoflow.__version__}: {sorted(wrong)}"
    assert {t for _, t in tags} <= {images.TRAIN_IMAGE, images.CPU_IMAGE}
