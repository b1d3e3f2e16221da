"""Where a run came from: the git commit of the code and the DVC hash of each input.

Input hashes are evidence, not a gate: an input that cannot be hashed (a dangling symlink, a
loop, an unreadable file inside a source folder) is recorded with the reason and never stops the
stage — the stage itself accounts for such files (curation lists them as corrupt).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dinoflow.config import pipeline_env
from dinoflow.config.secrets import redact_urls as redact

# MLflow tag keys: alphanumerics, `_ - . / space`, at most 250 characters
_TAG_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")
TAG_KEY_MAX = 250


@dataclass(frozen=True)
class InputHash:
    """The DVC hash of one input, or why there is none."""

    digest: str | None
    problem: str | None = None


def git_commit(cwd: str | Path = ".") -> tuple[str | None, bool | None]:
    """(commit, dirty) of the working tree, or `$DINOFLOW_GIT_COMMIT` inside an image (dirty unknown)."""
    override = pipeline_env.git_commit_override()
    if override:
        return override, None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None, None
        st = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return head.stdout.strip(), bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def dvc_md5(path: str | Path) -> str | None:
    """The hash DVC records for `path` in dvc.lock (md5 of a file, `<md5>.dir` of a directory), or None."""
    return hash_input(path).digest


def hash_input(path: str | Path) -> InputHash:
    """Hash a local input with dvc-data (the library DVC itself uses); never raises."""
    p = Path(path)
    if not p.exists():
        return InputHash(None, "does not exist")
    try:
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.db import HashFileDB
        from dvc_objects.fs.local import LocalFileSystem
        from dvc_objects.fs.memory import MemoryFileSystem
    except ImportError:
        return InputHash(None, "dvc-data is not installed")
    special = _first_special_file(p)
    if special is not None:  # hashing would block on a FIFO or read a device
        return InputHash(None, f"{special} is not a regular file")
    odb = HashFileDB(MemoryFileSystem(), "/staging")
    try:
        _, _, obj = build(odb, str(p.resolve()), LocalFileSystem(), "md5", dry_run=True)
    except (OSError, RuntimeError, ValueError) as e:  # broken links, loops, permissions, FIFOs
        return InputHash(None, f"{type(e).__name__}: {e}"[:500])
    return InputHash(obj.hash_info.value)


def _first_special_file(root: Path) -> Path | None:
    """The first FIFO, socket or device under `root` (links not followed), or None."""

    def special(path: Path) -> bool:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False  # unreadable or vanished: dvc-data reports it
        return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)

    if not root.is_dir():
        return root if special(root) else None
    for dirpath, _, files in os.walk(root):
        for name in files:
            if special(Path(dirpath, name)):
                return Path(dirpath, name)
    return None


def tag_key(prefix: str, name: str) -> str:
    """A valid MLflow tag key for `name` (a path or URI) under `prefix`: `s3://b/p/` → `<prefix>.s3/b/p`
    (credentials dropped, characters MLflow refuses replaced by `_`)."""
    text = redact(name).replace("***@", "").replace("://", "/").rstrip("/")
    return f"{prefix}.{_TAG_KEY_BAD.sub('_', text)}"[:TAG_KEY_MAX]


def is_remote(path: str) -> bool:
    return "://" in path
