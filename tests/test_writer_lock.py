"""One writer per output: a live holder (another process, really started) is named in the error; a lock
file left by a dead process is taken over; the file is gone when the block ends; without flock the
recorded owner decides."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

import dinoflow.writer_lock as wl
from dinoflow.writer_lock import OutputLocked, read_owner, writer_lock

HOLD = """
import sys, time
from dinoflow.writer_lock import writer_lock
with writer_lock(sys.argv[1], "the holder", "out", "wait"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(lock):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_named_and_its_lock_is_taken_once_it_ends(tmp_path):
    lock = tmp_path / "out" / ".lock"
    proc = _holder(lock)
    try:
        with pytest.raises(OutputLocked) as e:
            with writer_lock(lock, "me", "the output", "choose another out_dir"):
                pytest.fail("entered a block another process holds")
        msg = str(e.value)
        assert f"the holder (pid {proc.pid} on host {socket.gethostname()}" in msg
        assert f"lock file {lock}" in msg and "choose another out_dir" in msg
    finally:
        proc.kill()  # SIGKILL: no cleanup; its lock file stays, the kernel lock goes with it
        proc.wait()
    assert read_owner(lock)["pid"] == proc.pid
    with writer_lock(lock, "me", "the output", "x"):
        assert read_owner(lock)["pid"] == os.getpid()
    assert not lock.exists()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "what": "old", "since": "x"}))
    with writer_lock(lock, "me", "out", "x"):
        assert read_owner(lock)["what"] == "me"


def _no_flock(fd):
    raise OSError(errno.ENOLCK, "No locks available")


def test_without_flock_the_recorded_owner_decides(tmp_path, monkeypatch):
    """A file system without flock (some network mounts): live owner refused, dead one taken over."""
    monkeypatch.setattr(wl, "_flock", _no_flock)
    lock = tmp_path / ".lock"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid, "what": "live one", "since": "x"}))
        with pytest.raises(OutputLocked, match=f"live one \\(pid {live.pid}"):
            with writer_lock(lock, "me", "out", "x"):
                pass
    finally:
        live.kill()
        live.wait()
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "what": "remote", "since": "x"}))
    with pytest.raises(OutputLocked, match="on host elsewhere"):
        with writer_lock(lock, "me", "out", "x"):
            pass
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "what": "dead", "since": "x"}))
    with writer_lock(lock, "me", "out", "x"):
        assert read_owner(lock)["what"] == "me"
    assert not lock.exists()


def test_a_lock_that_cannot_be_created_is_a_named_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(wl.DinoflowError, match=f"cannot create the lock file {tmp_path}/file/.lock"):
        with writer_lock(tmp_path / "file" / ".lock", "me", "out", "x"):
            pass


def test_the_holder_sees_its_lock_until_the_block_ends(tmp_path):
    lock = tmp_path / ".lock"
    t0 = time.monotonic()
    with writer_lock(lock, "me", "out", "x"):
        assert lock.exists()
        with pytest.raises(OutputLocked):  # a second open file description in this process too
            with writer_lock(lock, "again", "out", "x"):
                pass
        assert lock.exists() and read_owner(lock)["what"] == "me"
    assert not lock.exists() and time.monotonic() - t0 < 5
