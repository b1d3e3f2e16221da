"""SIGTERM as an error raised out of a block of work (curation, a watched TrainJob).

The signal handler runs between two bytecodes of the main thread, wherever it is — also inside a
per-item `except Exception` (an image decoder that records any parser failure as a corrupt
file, a client that retries on any error). So the handler raises a BaseException, which such
blocks let through, and only the block's boundary turns it into the caller's named error.
Otherwise a SIGTERM that lands in the decoder marks one image corrupt and the stage finishes
with exit 0.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator


class _Interrupted(BaseException):
    """Raised by the handler; args: the signal's name."""


@contextlib.contextmanager
def raise_on_sigterm(error: Callable[[str], BaseException]) -> Iterator[None]:
    """For the duration of the block, SIGTERM ends it with `error(signal name)` (main thread only;
    elsewhere a no-op: Python delivers signals to the main thread). The previous handler is back
    once the block has ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Interrupted as e:
        raise error(str(e.args[0])) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
