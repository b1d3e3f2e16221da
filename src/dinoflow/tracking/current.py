"""The stage run this process has open (None when tracking is off or on a rank other than 0).

A ContextVar, not a module global: threads started inside a stage (data loaders, metric
flushers) see the run of the stage that started them, and nothing leaks between tests.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OpenRun:
    run: Any  # mlflow.ActiveRun
    uri: str


CURRENT: ContextVar[OpenRun | None] = ContextVar("dinoflow_stage_run", default=None)


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_enabled(cfg: Any) -> bool:
    """Tracking is on for rank 0 when `tracking.enabled` (default on)."""
    return rank() == 0 and bool(getattr(getattr(cfg, "tracking", None), "enabled", True))


def active_run() -> Any:
    """The open stage run, or None."""
    current = CURRENT.get()
    return current.run if current else None
