"""The output of `dinoflow embed`: one writer at a time, only regular files replaced, and a finished
output never replaced without `--overwrite`.

- `check_output`: what the output paths may be. `<out>`, `<out stem>.skipped.json` and the lock
  are written by renaming a new file over the old one, so each must be absent or a regular file (a
  rename over `/dev/…` would replace the device node); `<out>.parts` must be absent or a folder.
  An existing `<out>` is replaced only with `overwrite`, or when the parts beside it are the run
  that wrote it and was stopped before it removed them (`PartStore.finishing`).
- `OutputLock`: the project's writer lock on `<out>.lock`, holding the owner (pid, host, since,
  command). A second writer is refused with an error naming the owner. The kernel drops the lock
  when its process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import stat
import sys
from contextlib import ExitStack
from pathlib import Path

from dinoflow.embedding.parts import PartStore, parts_dir, skipped_path
from dinoflow.errors import DinoflowError
from dinoflow.writer_lock import writer_lock


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DinoflowError(f"cannot inspect {path}: {e.strerror or e}") from None


def check_output(output: str | Path, overwrite: bool, restart: bool = False) -> None:
    """DinoflowError when `output` (and the files written beside it) cannot be written safely, or
    when it is a finished output that this run would replace without `overwrite`."""
    out = Path(output)
    if out.parent.exists() and not out.parent.is_dir():
        raise DinoflowError(f"--output {out}: {out.parent} is not a directory")
    st = _lstat(out)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise DinoflowError(f"--output {out} is a directory; give a file name such as {out / 'embeddings.parquet'}")
    for path, what in ((out, "--output"), (skipped_path(out), "the skipped list"), (lock_path(out), "the lock file")):
        s = st if path == out else _lstat(path)
        if s is not None and not stat.S_ISREG(s.st_mode):
            raise DinoflowError(
                f"{what} {path} is {_kind(s.st_mode)}: dinoflow embed replaces it by renaming a new file over it, "
                "so it writes only regular files; give another --output path"
            )
    parts = _lstat(parts_dir(out))
    if parts is not None and not stat.S_ISDIR(parts.st_mode):
        raise DinoflowError(f"{parts_dir(out)} is {_kind(parts.st_mode)}, not the parts folder of a run; remove it")
    if st is not None and not overwrite and (restart or not PartStore.finishing(out)):
        raise DinoflowError(
            f"{out} exists (a finished output); pass --overwrite to replace it, or choose another --output"
        )


class OutputLock:
    """`with OutputLock(out):` — the one writer of `out`, through the project's one writer lock
    (`dinoflow.writer_lock`: a `flock` on `<out>.lock` naming the owner, dropped with its process)."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._held: ExitStack | None = None

    def __enter__(self) -> "OutputLock":
        held = ExitStack()
        held.enter_context(
            writer_lock(
                self.path,
                what=f"dinoflow embed ({' '.join(sys.argv)[:500]})",
                target=self.output,
                todo="stop it, or choose another --output",
            )
        )
        self._held = held
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None
