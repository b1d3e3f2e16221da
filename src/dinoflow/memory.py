"""Memory this process may still allocate, and the check a builder makes before it allocates.

`available_bytes`: free GPU memory on CUDA; on CPU the smallest of the host's MemAvailable, the
cgroup (container) limit left and the process's data / address-space limits left, shared by the
ranks torchrun starts on this node.
`refuse_over_memory`: a `ModelTooLarge` naming what would not fit and what to change, raised
before the allocation (which would otherwise take the machine or die deep in the allocator).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

from dinoflow.errors import DinoflowError

GIB = 2**30


class ModelTooLarge(DinoflowError):
    """A network (or its training state) the settings describe cannot fit in this machine's memory."""


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _rlimits_left() -> list[int]:
    """What the process's own limits (`ulimit -d` / `-v`, set by some schedulers) leave it."""
    status = {}
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    except OSError:
        return []
    left = []
    for limit_id, used_key in ((resource.RLIMIT_DATA, "VmData"), (resource.RLIMIT_AS, "VmSize")):
        soft = resource.getrlimit(limit_id)[0]
        if soft != resource.RLIM_INFINITY and used_key in status:
            left.append(max(0, soft - int(status[used_key].split()[0]) * 1024))
    return left


def available_bytes(device: Any) -> int | None:
    """Memory this process may still allocate on `device` (None when it cannot be told)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    candidates = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        candidates.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    for limit_f, used_f in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, used = _read_int(limit_f), _read_int(used_f)
        if limit is not None and used is not None and limit < 2**60:
            candidates.append(max(0, limit - used))
    own = _rlimits_left()  # this process's alone, not shared with the node's other ranks
    if not candidates and not own:
        return None
    shared = [min(candidates) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))] if candidates else []
    return min(shared + own)


def refuse_over_memory(what: str, need: int, todo: str, device: Any = None) -> None:
    """Raise ModelTooLarge when `need` bytes exceed what `device` (default: torch's default device) has left."""
    import torch

    device = torch.device(device) if device is not None else torch.get_default_device()
    if device.type == "meta":
        return
    avail = available_bytes(device)
    if avail is not None and need > avail:
        raise ModelTooLarge(
            f"{what} needs at least {need / GIB:,.1f} GiB on {device.type}, but only {avail / GIB:,.1f} GiB is "
            f"available: nothing was allocated. {todo}"
        )
