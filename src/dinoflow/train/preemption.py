"""SIGTERM / SIGINT during training: stop within seconds, keep what can be kept, exit non-zero.

Spot and preemptible nodes send SIGTERM shortly before they go. Inside a training step (and
the checkpoint after it, and the export at the end) the signal is deferred: the step finishes,
all ranks agree to stop at the same step, a checkpoint is written and the loop raises
`Preempted`. During setup and while waiting for a batch nothing would be lost by stopping at
once, so the signal interrupts right away; the loop then checkpoints the last finished step when
it runs as a single process (with several ranks a collective save could not be agreed on, so it
waits up to GRACE_S for the batch first, and otherwise resumes from the last periodic checkpoint).

`Preempted` is a DinoflowError: the stage exits non-zero, so `dvc repro`, Kubeflow and torchrun
record it as not done, and rerunning the same command resumes from the checkpoint.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterator

from dinoflow.errors import DinoflowError

GRACE_S = 10.0  # how long a multi-rank job may keep waiting for a batch after the signal


class Preempted(DinoflowError):
    """The job was asked to stop before it finished; its last checkpoint resumes it."""


class StopSignal(BaseException):
    """Raised from the signal handler. A BaseException so that no `except Exception` on the way
    (e.g. a decoder's per-item error handling) mistakes it for a bad sample."""


class StopRequested:
    """Installs SIGTERM/SIGINT handlers for its `with` block; see the module docstring."""

    def __init__(self, distributed: bool = False) -> None:
        self.flag = False
        self.signame = ""
        self.distributed = distributed
        self._deferring = False
        self._raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
        handlers = {signal.SIGTERM: self._handle, signal.SIGINT: self._handle}
        if self.distributed:  # the grace timer; single processes leave SIGALRM alone (pytest-timeout uses it)
            handlers[signal.SIGALRM] = self._grace_over
        for sig, handler in handlers.items():
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def __exit__(self, *exc) -> None:
        if signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        self.flag = True
        self.signame = signal.Signals(signum).name
        if self._deferring or self._raised:  # raise once: the stop is already under way
            return
        if self.distributed and signum == signal.SIGTERM:
            signal.setitimer(signal.ITIMER_REAL, GRACE_S)
            return
        self._raise()

    def _grace_over(self, signum, frame) -> None:
        if not self._deferring and not self._raised:
            self._raise()

    def _raise(self) -> None:
        self._raised = True
        raise StopSignal(self.signame)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal inside this block only sets `flag`; the caller acts on it at the end."""
        before, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = before

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """Inside a `deferred` block: a signal in here interrupts at once (raises StopSignal)."""
        before, self._deferring = self._deferring, False
        try:
            if self.flag and not self.distributed and not self._raised:  # arrived just before: act on it now
                self._raise()
            yield
        finally:
            self._deferring = before
