"""BackboneArtifact: the one way a stage opens a trained backbone (a .pth or its folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dinoflow.models.artifact as artifact_module
from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.models import BackboneArtifact, BackboneNotFound, build_backbone, export_backbone


@pytest.fixture
def exported(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    return export_backbone(model, tmp_path / "run")


def test_a_folder_opens_its_backbone_file(exported):
    a = BackboneArtifact.open(exported.parent)
    assert a.path == exported and a.folder == exported.parent and a.config_path == exported.parent / "config.yaml"
    assert a == BackboneArtifact.open(str(exported.parent)), "a str path is the same artifact"


def test_a_pth_file_opens_as_itself(exported):
    assert BackboneArtifact.open(exported).path == exported


def test_a_file_with_another_name_or_no_suffix_opens_as_itself(exported, tmp_path):
    hub = tmp_path / "dinov2_vits14_pretrain.pth"
    hub.write_bytes(exported.read_bytes())
    assert BackboneArtifact.open(hub).path == hub
    bare = tmp_path / "weights"
    bare.write_bytes(exported.read_bytes())
    assert BackboneArtifact.open(bare).path == bare, "an existing suffix-less file is the file, not a folder"


def test_a_missing_file_names_the_file_looked_for(tmp_path):
    with pytest.raises(BackboneNotFound, match=r"backbone .*/absent\.pth not found: give a backbone\.pth") as e:
        BackboneArtifact.open(tmp_path / "absent.pth")
    assert e.value.path == tmp_path / "absent.pth" and isinstance(e.value, DinoflowError)


def test_a_suffix_less_path_that_does_not_exist_yet_names_its_backbone_file(tmp_path):
    # a stage's out_dir before the stage ran: the message names the file that stage would write
    with pytest.raises(BackboneNotFound) as e:
        BackboneArtifact.open(tmp_path / "models" / "student", "student backbone {path} not found: run distill")
    assert e.value.path == tmp_path / "models" / "student" / "backbone.pth"
    assert str(e.value) == f"student backbone {tmp_path}/models/student/backbone.pth not found: run distill"


def test_a_folder_without_backbone_pth_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("arch: vit_pico\n")
    with pytest.raises(BackboneNotFound, match=r"/empty/backbone\.pth"):
        BackboneArtifact.open(tmp_path / "empty")


def test_the_message_is_taken_as_written_braces_included(tmp_path):
    with pytest.raises(BackboneNotFound) as e:
        BackboneArtifact.open(tmp_path / "x.pth", "model '{odd}': {path} is missing")
    assert str(e.value) == f"model '{{odd}}': {tmp_path}/x.pth is missing"


def test_symlinks_are_followed_and_the_given_path_is_kept(exported, tmp_path):
    folder_link = tmp_path / "latest"
    folder_link.symlink_to(exported.parent, target_is_directory=True)
    a = BackboneArtifact.open(folder_link)
    assert a.path == folder_link / "backbone.pth" and a.config_path.is_file(), "config.yaml read beside the link"
    file_link = tmp_path / "student.pth"
    file_link.symlink_to(exported)
    assert BackboneArtifact.open(file_link).path == file_link
    dangling = tmp_path / "gone.pth"
    dangling.symlink_to(tmp_path / "nowhere.pth")
    with pytest.raises(BackboneNotFound, match="gone.pth"):
        BackboneArtifact.open(dangling)


def test_a_directory_named_like_a_weights_file_is_a_folder(exported, tmp_path):
    odd = tmp_path / "model.pth"
    odd.mkdir()
    with pytest.raises(BackboneNotFound, match=r"model\.pth/backbone\.pth"):
        BackboneArtifact.open(odd)
    os.link(exported, odd / "backbone.pth")
    assert BackboneArtifact.open(odd).path == odd / "backbone.pth"


def test_load_builds_the_module_once_and_sha256_reads_the_file_once(exported, monkeypatch):
    loads, hashes = [], []
    real_load, real_hash = artifact_module.load_backbone, artifact_module.file_sha256
    monkeypatch.setattr(artifact_module, "load_backbone", lambda p, **kw: loads.append(kw) or real_load(p, **kw))
    monkeypatch.setattr(artifact_module, "file_sha256", lambda p: hashes.append(p) or real_hash(p))
    a = BackboneArtifact.open(exported.parent)
    first = a.load()
    assert a.load() is first and not first.training and len(loads) == 1
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(first(x), real_load(exported)(x))
    other = a.load(interpolate_offset=0.0)
    assert other is not first and other.config.interpolate_offset == 0.0 and a.load(interpolate_offset=0.0) is other
    assert len(loads) == 2, "each set of overrides is built once"
    assert a.sha256() == a.sha256() == file_sha256(exported) and len(hashes) == 1
