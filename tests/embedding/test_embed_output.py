"""`dinoflow embed`'s output: one writer at a time, only regular files replaced, and a finished
output never replaced without --overwrite."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from dinoflow.embedding.output import OutputLock, lock_path
from dinoflow.embedding.parts import PartStore, parts_dir, read_embeddings
from dinoflow.models import build_backbone, export_backbone

from .test_embed import embed, encode, pictures


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    torch.manual_seed(0)
    model = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    return export_backbone(model, tmp_path_factory.mktemp("model") / "backbone.pth")


def _folder(path, n: int, seed: int = 0):
    path.mkdir()
    for i, a in enumerate(pictures(n, seed)):
        (path / f"{i:04d}.png").write_bytes(encode(a))
    return path


@pytest.mark.slow
def test_a_second_writer_is_refused_and_the_first_finishes_whole(pth, tmp_path, capsys):
    src = _folder(tmp_path / "images", 120, seed=3)
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "dinoflow", "embed", str(pth), str(src), "-o", str(out), "--no-progress"]
    first = subprocess.Popen(
        cmd + ["--image-size", "84", "--resize-ratio", "1.0", "--batch-size", "4", "--part-size", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(parts_dir(out).glob("part-*.parquet")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first run finished before the second could start; give it more images"
    assert embed(pth, src, "-o", out) == 1
    err = capsys.readouterr().err
    assert "out.parquet is being written by dinoflow embed" in err and f"(pid {first.pid} on host " in err, err
    assert "One writer per output" in err
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    uids, _ = read_embeddings(out)
    assert uids == [f"{i:04d}.png" for i in range(120)], "the first run's output is whole, each uid once"
    assert not parts_dir(out).exists() and not lock_path(out).exists()


def test_a_finished_output_is_never_replaced_silently(pth, tmp_path, capsys):
    src = _folder(tmp_path / "images", 3)
    out = tmp_path / "out.parquet"
    assert embed(pth, src, "-o", out) == 0
    before = out.read_bytes()
    # the parts of another run beside a finished output (a run that died, or one writing elsewhere
    # into the same name): resuming them must not replace the output unasked
    PartStore(out, {"model_sha256": "x", "format": 1}).write_part(["zz.png"], {}, [])
    capsys.readouterr()
    assert embed(pth, src, "-o", out) == 1
    assert "out.parquet exists (a finished output); pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert embed(pth, src, "-o", out, "--overwrite", "--restart") == 0
    assert read_embeddings(out)[0] == ["0000.png", "0001.png", "0002.png"]


def test_a_run_stopped_while_finishing_may_finish_over_its_own_output(pth, tmp_path, capsys):
    src = _folder(tmp_path / "images", 3)
    out = tmp_path / "out.parquet"
    assert embed(pth, src, "-o", out) == 0
    rows = read_embeddings(out)
    # the state a kill between writing the output and removing the parts leaves
    settings = json.loads(__import__("pyarrow.parquet", fromlist=["x"]).read_schema(out).metadata[b"dinoflow.embed"])
    store = PartStore(out, {k: settings[k] for k in settings if k not in ("model", "dim")})
    store.write_part(rows[0], {"embedding": rows[1]}, [])
    (parts_dir(out) / "finishing").touch()
    capsys.readouterr()
    assert embed(pth, src, "-o", out) == 0
    assert json.loads(capsys.readouterr().out)["resumed_rows"] == 3
    assert read_embeddings(out)[0] == rows[0] and not parts_dir(out).exists()


def test_outputs_that_are_not_regular_files_are_refused(pth, tmp_path, capsys):
    src = _folder(tmp_path / "images", 1)
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    link = tmp_path / "link.parquet"
    link.symlink_to(tmp_path / "elsewhere.parquet")
    (tmp_path / "file").write_text("x")
    cases = [
        ("/dev/null", "--output /dev/null is a character device"),
        (fifo, f"--output {fifo} is a FIFO"),
        (link, f"--output {link} is a symlink"),
        (tmp_path / "file" / "x.parquet", "is not a directory"),
    ]
    for output, message in cases:
        assert embed(pth, src, "-o", output, "--overwrite") == 1, output
        assert message in capsys.readouterr().err
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode), "the device node is still a device"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    os.mkfifo(tmp_path / "out.skipped.json")
    assert embed(pth, src, "-o", tmp_path / "out.parquet") == 1
    assert "the skipped list" in capsys.readouterr().err and not (tmp_path / "out.parquet").exists()


def test_the_lock_names_its_owner_and_goes_with_it(tmp_path):
    out = tmp_path / "o.parquet"
    with OutputLock(out):
        owner = json.loads(lock_path(out).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] and owner["since"]
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from dinoflow.embedding.output import OutputLock\nOutputLock({str(out)!r}).__enter__()",
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1 and f"(pid {os.getpid()} on host " in r.stderr, r.stderr[-1000:]
    assert not lock_path(out).exists()
    with OutputLock(out):  # free again
        pass
