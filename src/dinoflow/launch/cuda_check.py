"""Before training on GPUs: does the node's NVIDIA driver run the CUDA that torch was built with?

A CUDA image (docker/Dockerfile, build argument CUDA_VERSION) carries its CUDA runtime in the torch
wheels; the node supplies only the driver. A driver older than the runtime's minimum makes
`torch.cuda.is_available()` quietly False (a warning in the log), and the stage then fails much
later, or trains on the CPU. This check names the mismatch and what to do before anything starts.

The minimums are the drivers NVIDIA's CUDA release notes give for minor-version compatibility
(Linux): any driver at or above the major's minimum runs every minor release of that major.

    python -m dinoflow.launch.cuda_check [COMMAND ...]   # check, then exec COMMAND (TrainJob pods)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from dinoflow.errors import DinoflowError

# CUDA major → minimum Linux driver (NVIDIA CUDA release notes, "minor version compatibility")
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
PROC_VERSION = Path("/proc/driver/nvidia/version")


class CudaDriverTooOld(DinoflowError):
    """The node's NVIDIA driver cannot run the image's CUDA runtime."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def check_driver(cuda: str | None, driver: str | None) -> None:
    """Raise CudaDriverTooOld unless `driver` (e.g. "580.82.07") runs CUDA `cuda` (e.g. "13.0").

    `cuda` None: a CPU build of torch, nothing to check. `driver` None: no NVIDIA driver on this
    node, which is an error for a CUDA build asked to train on GPUs."""
    if not cuda:
        return
    major = _version(cuda)[0]
    need = MIN_DRIVER.get(major)
    if need is None:
        raise CudaDriverTooOld(
            f"torch was built with CUDA {cuda}, whose driver minimum this check does not know; "
            f"known: CUDA {', '.join(map(str, sorted(MIN_DRIVER)))}. Build the image with one of them "
            "(docker build --build-arg CUDA_VERSION=...)"
        )
    if not driver:
        raise CudaDriverTooOld(
            f"torch was built with CUDA {cuda} but this node shows no NVIDIA driver "
            f"({PROC_VERSION} and nvidia-smi are absent): schedule the step on a GPU node "
            "(accelerator type, tolerations, node selector) with the NVIDIA device plugin"
        )
    if _version(driver) < _version(need):
        raise CudaDriverTooOld(
            f"the node's NVIDIA driver {driver} is older than {need}, the minimum for "
            f"CUDA {major}.x (torch was built with CUDA {cuda}): upgrade the node's driver, or build the "
            f"training image for an older CUDA (make images CUDA_VERSION=12.8) and compile with it"
        )


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version on this node, or None where there is none."""
    try:
        m = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)", PROC_VERSION.read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=60
        )
        lines = out.stdout.split()
        if out.returncode == 0 and lines:
            return lines[0]
    return None


def check_this_node() -> None:
    """check_driver for the torch in this process and this node's driver."""
    import torch

    check_driver(torch.version.cuda, driver_version())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_this_node()
    except CudaDriverTooOld as e:
        print(f"dinoflow: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args:
        os.execvp(args[0], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
