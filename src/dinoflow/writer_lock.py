"""One writer per output: a lock file naming its owner (host, pid, what, since when).

Two jobs writing one output directory interleave their files (two trainings sharing a checkpoint
directory delete each other's temp checkpoint and die on a raw FileNotFoundError). `writer_lock`
holds `<path>` for the life of a block:
- the kernel's `flock` on the file is the lock: it ends with the process, so a lock file left by
  a killed job (on any host, on a file system that supports flock) is simply taken over;
- the file's text names the owner, for the error a second writer gets (`OutputLocked`);
- where the file system has no flock, the recorded owner decides: a dead process on this host is
  taken over, a live one (or one on another host, which cannot be checked from here) is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypedDict

from dinoflow.errors import DinoflowError, storage_error

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputLocked(DinoflowError):
    """Another live process writes this output."""


class LockOwner(TypedDict):
    """What a lock file records of the process holding it."""

    host: str
    pid: int
    what: str
    since: str  # local time, ISO 8601


def _owner(what: str) -> LockOwner:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "what": what,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_owner(lock: Path) -> dict[str, Any]:
    """The owner a lock file records ({} when it is empty or not ours)."""
    try:
        data = json.loads(lock.read_text(errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "another process (its lock file names none)"
    return (
        f"{owner.get('what', 'another process')} (pid {owner.get('pid')} on host {owner.get('host')}, "
        f"since {owner.get('since')})"
    )


def _alive_here(owner: dict[str, Any]) -> bool:
    """True unless the owner is a process of this host that no longer runs."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return bool(owner)
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def _refuse(lock: Path, target: str, owner: dict[str, Any], todo: str) -> OutputLocked:
    return OutputLocked(
        f"{target} is being written by {_describe(owner)}; lock file {lock}. One writer per output: wait for "
        f"that one to finish, or {todo}. If no such process runs any more, delete {lock}"
    )


def _flock(fd: int) -> bool:
    """The kernel lock: True when taken, False when another process holds it (OSError: no flock here)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open(lock: Path) -> int:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        named = storage_error(e, lock)
        raise named or DinoflowError(f"cannot create the lock file {lock} ({e}); choose another location") from e


@contextmanager
def writer_lock(lock: str | Path, what: str, target: str | Path, todo: str) -> Iterator[None]:
    """Hold `lock` while the block runs; `OutputLocked` naming `target`, the owner and `todo` when
    another live process holds it. `what` describes this writer to the next one."""
    lock = Path(lock)
    while True:
        fd = _open(lock)
        try:
            taken = _flock(fd)
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            owner = read_owner(lock)
            if owner and owner.get("pid") != os.getpid() and _alive_here(owner):
                os.close(fd)
                raise _refuse(lock, str(target), owner, todo) from None
            taken = True
        if not taken:
            os.close(fd)
            raise _refuse(lock, str(target), read_owner(lock), todo)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked after we opened it
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner(what)).encode())
        yield
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)
