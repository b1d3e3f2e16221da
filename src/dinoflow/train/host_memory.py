"""Host memory for a training step on a CPU: freed buffers are kept for the next step.

A CPU step allocates and frees the same large tensors every step (activations, the [rows × K]
prototype scores, gradients of 64 MB prototype matrices). glibc's malloc serves each allocation
over its mmap threshold with a fresh mmap and unmaps it on free, so every step touches ~400 MB
of new pages: ~100,000 page faults and ~0.2 s of kernel time per ViT-S step on two cores
(`ru_minflt` around one step of `benchmarks/train_throughput.py`). Serving every allocation from
malloc's heaps and never trimming them back makes the next steps reuse those pages: ~0 faults,
3–4 % off the step. The cost is fragmentation held, not returned: over 30 steps of that
configuration peak RSS reached 2,867 MiB against 2,773 MiB with malloc's defaults (and 3,002 MiB
for the step before the CPU speed work).

Only for training on a CPU: a process whose footprint shrinks after a phase (curation's stages)
should give memory back, and on a GPU the host side of a step is small.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters (malloc.h); one definition here
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # mallopt takes an int: the largest threshold it can express (2 GiB)


def glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it has `gnu_get_libc_version`), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 -- the attribute is the test
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_host_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heaps (no per-allocation mmap) and keep
    freed memory for reuse (trim only past 2 GiB free at the heap's top). Process-wide, and
    inherited by forked data-loader workers. Returns False where the C library is not glibc
    (musl, macOS): nothing is changed there."""
    libc = glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
