"""The overlays' kustomize `images:` entries: every project image the rendered manifests run has one
(no public registry serves `dinoflow/*`), and pointing an entry at a registry digest reaches every
container that runs the image, the TrainJob node pods of the training runtime included."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from k8s_build import K8S, OVERLAYS, build, kubectl

from dinoflow.launch import images

PROJECT = (images.CPU_IMAGE_NAME, images.TRAIN_IMAGE_NAME)
DIGEST = "sha256:" + "ab" * 32


def _images(docs: list[dict]) -> set[str]:
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                for c in node.get(key, []) if isinstance(node.get(key), list) else []:
                    found.add(c["image"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(docs)
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_project_image_has_an_images_entry(overlay):
    entries = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())["images"]
    assert {e["name"] for e in entries} == set(PROJECT)
    used = {i for i in _images(build(K8S / "overlays" / overlay)) if i.startswith("dinoflow/")}
    assert {i.split(":")[0] for i in used} == set(PROJECT)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_registry_digest_reaches_every_container(overlay, tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / "overlays" / overlay / "kustomization.yaml"
    kust = yaml.safe_load(path.read_text())
    for e in kust["images"]:
        e.pop("newTag", None)
        e.update(newName="reg.example/acme/" + e["name"].split("/")[-1], digest=DIGEST)
    path.write_text(yaml.safe_dump(kust))
    out = subprocess.run([kubectl(), "kustomize", str(path.parent)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    used = _images([d for d in yaml.safe_load_all(out.stdout) if d])
    assert not {i for i in used if i.startswith("dinoflow/")}
    assert {i for i in used if i.startswith("reg.example/")} == {
        f"reg.example/acme/dinoflow-cpu@{DIGEST}",
        f"reg.example/acme/dinoflow-cuda@{DIGEST}",
    }
