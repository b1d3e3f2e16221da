"""Input hashes never break a stage: broken links, loops and FIFOs are recorded with the reason."""

from __future__ import annotations

import os
import threading

import pytest

from dinoflow.tracking.provenance import dvc_md5, hash_input, tag_key


def _pool(root):
    root.mkdir()
    (root / "ok.png").write_bytes(b"\x89PNG not really")
    return root


def test_a_normal_folder_gets_the_dvc_hash(tmp_path):
    d = _pool(tmp_path / "pool")
    h = hash_input(d)
    assert h.problem is None and h.digest.endswith(".dir") and h.digest == dvc_md5(d)


@pytest.mark.parametrize("hostile", ["dangling", "loop", "fifo"])
def test_hostile_entries_are_reported_not_raised(tmp_path, hostile):
    d = _pool(tmp_path / "pool")
    if hostile == "dangling":
        os.symlink(tmp_path / "nowhere.png", d / "dangling.png")
    elif hostile == "loop":
        os.symlink(d / "b.png", d / "a.png")
        os.symlink(d / "a.png", d / "b.png")
    else:
        os.mkfifo(d / "fifo.png")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(hash_input(d)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert result, "hashing blocked (a FIFO must never be opened)"
    h = result[0]
    assert h.digest is None and h.problem
    assert {"dangling": "dangling.png", "loop": ".png", "fifo": "not a regular file"}[hostile] in h.problem


def test_missing_input_has_no_hash(tmp_path):
    h = hash_input(tmp_path / "missing")
    assert h.digest is None and h.problem == "does not exist"


@pytest.mark.parametrize(
    "name, key",
    [
        ("data/curated", "dvc.md5.data/curated"),
        ("s3://bucket/raw/pool/", "dvc.md5.s3/bucket/raw/pool"),
        ("s3://user:hunter2@bucket/p", "dvc.md5.s3/bucket/p"),
        ("gs://b/a=b&c", "dvc.md5.gs/b/a_b_c"),
    ],
)
def test_tag_keys_are_valid_mlflow_keys_without_credentials(name, key):
    from mlflow.utils.validation import _validate_tag_name

    got = tag_key("dvc.md5", name)
    assert got == key and "hunter2" not in got
    _validate_tag_name(got)
    assert len(tag_key("x", "a/" * 400)) <= 250
