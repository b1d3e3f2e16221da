"""Marks between the phases of a training step, timed only when a benchmark installs a clock.

The step calls `mark(name)` where each phase ends (teacher and centering, student forward,
losses, backward, optimiser and EMA). Without a clock a mark is one global lookup; with one
(`PhaseClock`, benchmarks) it records a CUDA event (no wait for the device) or a host time on a
CPU, and the memory in use at that point.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

PHASES = ("teacher_centering", "student_forward", "losses", "backward", "optimizer_ema")

_CLOCK: "PhaseClock | None" = None


def mark(name: str) -> None:
    """The phase `name` ends here (a no-op unless a `PhaseClock` is installed)."""
    if _CLOCK is not None:
        _CLOCK.record(name)


class PhaseClock:
    """Per-step phase durations in ms and the memory allocated at each mark (CUDA: bytes)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[list[tuple[str, Any, int]]] = []  # (phase, CUDA event or perf_counter, bytes)

    def start_step(self) -> None:
        self.steps.append([])
        self.record("start")

    def record(self, name: str) -> None:
        if not self.steps:
            return
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.steps[-1].append((name, ev, torch.cuda.memory_allocated()))
        else:
            self.steps[-1].append((name, time.perf_counter(), 0))

    def durations(self) -> list[dict[str, float]]:
        """One {phase: ms} per step (synchronises first on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        for marks in self.steps:
            row = {}
            for (_, a, _), (name, b, _) in zip(marks, marks[1:]):
                row[name] = a.elapsed_time(b) if self.cuda else 1000 * (b - a)
            out.append(row)
        return out

    def memory_at(self, name: str) -> int:
        """Bytes allocated at the last step's mark `name` (0 on a CPU or when never marked)."""
        for mark_name, _, mem in reversed(self.steps[-1] if self.steps else []):
            if mark_name == name:
                return mem
        return 0


@contextmanager
def installed(clock: PhaseClock) -> Iterator[PhaseClock]:
    global _CLOCK
    previous, _CLOCK = _CLOCK, clock
    try:
        yield clock
    finally:
        _CLOCK = previous
