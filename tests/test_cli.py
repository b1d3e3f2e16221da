"""`dinoflow` CLI: exit codes; one bounded message per named error (the traceback with DINOFLOW_DEBUG=1);
a full disk, a read-only file system or a denied permission named with its path — real ones, made
with Linux namespaces (tests/fs_sandbox.py), as the issue saw them (`unexpected pos 704 vs 598`)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fs_sandbox import run_on_tmpfs, run_read_only, unprivileged_prefix

from dinoflow.cli import DEBUG_ENV, main, run_guarded
from dinoflow.errors import MAX_MESSAGE_CHARS, DinoflowError, StorageError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _good_pool(root: Path) -> Path:
    from hostile.corpus import write_good

    write_good(root / "pool", 3)
    return root / "pool"


def _curate_cmd(pool: Path, out: Path) -> list[str]:
    sets = [
        f"curate.sources=[{pool}]",
        "curate.seeds=null",
        "curate.eval_sets=[]",
        "curate.retrieval=none",
        "curate.kmeans_levels=[2]",
        f"curate.out_dir={out}/curated",
        f"curate.report_dir={out}/reports",
        "tracking.enabled=false",
    ]
    return [sys.executable, "-m", "dinoflow", "curate", *[a for s in sets for a in ("-S", s)]]


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- named errors in this process


def test_named_error_prints_one_bounded_message_and_exit_code(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def fail():
        raise DinoflowError("bad input: " + "x" * 100_000)

    code, result = run_guarded("dinoflow test", fail, [])
    err = capsys.readouterr().err
    assert (code, result) == (1, None)
    assert err.startswith("dinoflow test: bad input: xxx") and "more characters]" in err
    assert len(err) <= MAX_MESSAGE_CHARS + 100 and "Traceback" not in err


def test_debug_env_prints_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")

    def fail():
        raise DinoflowError("named")

    assert run_guarded("dinoflow test", fail, [])[0] == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("dinoflow test: named")


def test_other_errors_keep_their_traceback():
    def bug():
        raise ZeroDivisionError("a bug, not the user's problem")

    with pytest.raises(ZeroDivisionError):
        run_guarded("dinoflow test", bug, [Path(".")])


def test_storage_os_error_from_anywhere_is_named(capsys):
    def write():
        raise OSError(errno.EROFS, "Read-only file system", "/data/out/x.bin")

    assert run_guarded("dinoflow test", write, [])[0] == 1
    assert "/data/out/x.bin is on a read-only file system" in capsys.readouterr().err


def test_checkpoint_exception_with_a_full_disk_inside_is_named(capsys):
    """torch.distributed.checkpoint wraps each rank's failure in a CheckpointException (a BaseException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    def save():
        raise CheckpointException("save failed", {0: (OSError(errno.ENOSPC, "No space left on device"), None)})

    assert run_guarded("dinoflow pretrain", save, [])[0] == 1
    assert "no space left on the device holding the output location" in capsys.readouterr().err


def test_a_stage_error_exits_1_and_a_config_error_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["register", "-S", "register.eval_report=missing.json", "-S", "tracking.enabled=false"]) == 1
    assert "models/student/backbone.pth not found" in capsys.readouterr().err  # the stage's own check, named
    assert main(["register", "-S", "register.min_knn_top1=2"]) == 2
    assert "register.min_knn_top1: Input should be less than or equal to 1" in capsys.readouterr().err


# ---------------------------------------------------------------- real file-system failures


def test_full_disk_is_named_with_its_path(tmp_path):
    pool, full = _good_pool(tmp_path), tmp_path / "full"
    r = run_on_tmpfs(_curate_cmd(pool, full), full, size="16k", timeout=180, env=ENV)
    assert r.returncode == 1, r.stderr[-3000:]
    line = _last_line(r.stderr)
    assert line.startswith(f"dinoflow curate: no space left on the device holding {full}/curated"), r.stderr[-3000:]
    assert "free space there, or point the stage's output elsewhere" in line and "Traceback" not in r.stderr
    assert not [p for p in full.rglob("*.tmp")] if full.exists() else True  # no temp file left behind


def test_full_disk_traceback_is_available_with_debug(tmp_path):
    pool, full = _good_pool(tmp_path), tmp_path / "full"
    r = run_on_tmpfs(_curate_cmd(pool, full), full, size="16k", timeout=180, env={**ENV, DEBUG_ENV: "1"})
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert "No space left on device" in r.stderr and "dinoflow curate: no space left" in _last_line(r.stderr)


def test_read_only_output_is_named(tmp_path):
    pool, ro = _good_pool(tmp_path), tmp_path / "ro"
    r = run_read_only(_curate_cmd(pool, ro), ro, timeout=180, env=ENV)
    assert r.returncode == 1, r.stderr[-3000:]
    # refused before any work: curate checks its output folders first
    assert f"{ro}/curated" in _last_line(r.stderr) and f"{ro} is on a read-only file system" in _last_line(r.stderr)


def test_permission_denied_output_is_named():
    prefix = unprivileged_prefix()
    root = Path(tempfile.mkdtemp(prefix="dinoflow-cli-perm-"))
    try:
        root.chmod(0o755)
        pool, locked = _good_pool(root), root / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)  # readable, not writable by anyone but root
        r = subprocess.run(
            [*prefix, *_curate_cmd(pool, locked)],
            capture_output=True,
            text=True,
            timeout=180,
            env=ENV,
            cwd=tempfile.gettempdir(),
        )
        assert r.returncode == 1, r.stderr[-3000:]
        assert _last_line(r.stderr).startswith(
            f"dinoflow curate: curate.out_dir = '{locked}/curated' cannot be written"
        ), r.stderr[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


ATOMIC_TORCH_SAVE = """
import sys, torch
from pathlib import Path
from dinoflow.io import atomic_path
from dinoflow.errors import StorageError
target = Path(sys.argv[1]) / "weights.pth"
try:
    with atomic_path(target) as tmp:
        torch.save({"w": torch.zeros(200_000)}, tmp)
except StorageError as e:
    print("StorageError:", e)
print("left:", sorted(p.name for p in target.parent.iterdir()))
"""


def test_atomic_writer_names_torchs_short_write(tmp_path):
    """torch.save on a full disk says `unexpected pos …`: atomic_path turns it into a StorageError."""
    full = tmp_path / "full"
    r = run_on_tmpfs([sys.executable, "-c", ATOMIC_TORCH_SAVE, str(full)], full, size="64k", timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"StorageError: no space left on the device holding {full}/weights.pth" in r.stdout, r.stdout
    assert "unexpected pos" in r.stdout  # what the writer said is kept, as a detail
    assert "left: []" in r.stdout  # no half-written temp file


@pytest.mark.slow
def test_pretrain_on_a_full_disk_is_named(tmp_path):
    """The issue's case: a checkpoint written by torch.distributed.checkpoint onto a full disk."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_conftest", Path(__file__).parent / "train" / "conftest.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)  # tiny training configs (tests/train/conftest.py)
    cli_overrides, write_image_folder = train.cli_overrides, train.write_image_folder
    data, full = write_image_folder(tmp_path / "imgs", 16), tmp_path / "full"
    args = ["pretrain", *cli_overrides(full, data, "pretrain.train.max_steps=2")]
    r = run_on_tmpfs([sys.executable, "-m", "dinoflow", *args], full, size="2m", timeout=300, env=ENV)
    assert r.returncode == 1, r.stderr[-3000:]
    line = _last_line(r.stderr)
    assert line.startswith(f"dinoflow pretrain: no space left on the device holding {full}"), r.stderr[-3000:]
    assert "/ckpt/pretrain-" in line and "/step_00000002" in line, line  # the checkpoint being written
    assert "Traceback" not in r.stderr


def test_storage_error_is_a_dinoflow_error():
    assert issubclass(StorageError, DinoflowError)
