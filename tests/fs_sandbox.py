"""Real file-system failures for tests, without root on the host: Linux user + mount namespaces.

- `run_on_tmpfs(cmd, mount_at, size)`: run `cmd` with a tmpfs of `size` mounted at `mount_at`
  (a real full disk: writes past `size` fail with ENOSPC);
- `run_read_only(cmd, path)`: run `cmd` with `path` bind-mounted read-only (EROFS);
- `unprivileged_prefix()`: a prefix under which mode bits apply to this user's files (EACCES),
  even when the tests run as root.

Each skips the calling test, saying why, where the kernel does not allow unprivileged namespaces.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest


@lru_cache(maxsize=None)
def _works(*args: str) -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, *args], capture_output=True, timeout=30).returncode == 0


def _need(args: tuple[str, ...], what: str) -> str:
    if not _works(*args):
        pytest.skip(f"{what} needs unprivileged Linux namespaces (`unshare {' '.join(args)}` failed here)")
    return shutil.which("unshare")  # type: ignore[return-value]


def _in_mount_ns(setup: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    unshare = _need(("-rm", "true"), "a private mount")
    script = f"{setup} && exec {shlex.join(cmd)}"
    return subprocess.run([unshare, "-rm", "sh", "-c", script], capture_output=True, text=True, **kw)


def run_on_tmpfs(cmd: list[str], mount_at: Path, size: str = "64k", **kw) -> subprocess.CompletedProcess:
    mount_at.mkdir(parents=True, exist_ok=True)
    return _in_mount_ns(f"mount -t tmpfs -o size={size} dinoflow-full {shlex.quote(str(mount_at))}", cmd, **kw)


def run_read_only(cmd: list[str], path: Path, **kw) -> subprocess.CompletedProcess:
    path.mkdir(parents=True, exist_ok=True)
    p = shlex.quote(str(path))
    return _in_mount_ns(f"mount --bind {p} {p} && mount -o remount,bind,ro {p}", cmd, **kw)


def unprivileged_prefix() -> list[str]:
    """[] when not root; else `unshare -U`: a user namespace without a mapping for root, where host
    files' owner is unmapped, root's capabilities do not apply to them and the mode bits decide."""
    if os.geteuid() != 0:
        return []
    return [_need(("-U", "true"), "denying a file to root"), "-U"]
