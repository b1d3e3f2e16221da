"""The registry gate as a pipeline condition (`dsl.If(gate)` before the register step).

The rule lives in one place, `dinoflow.registry.gate_verdict(report, cfg.register)` (thresholds
from `register` in params.yaml, report from `register.eval_report`); this only adapts it.
"""

from __future__ import annotations

import importlib

from dinoflow.config import Config
from dinoflow.errors import DinoflowError


def gate_verdict(cfg: Config) -> tuple[bool, str]:
    """(passed, human-readable reason) for the evaluation report at `cfg.register.eval_report`."""
    registry = importlib.import_module("dinoflow.registry")
    for name in ("read_eval_report", "gate_verdict"):
        if not hasattr(registry, name):
            raise DinoflowError(f"dinoflow.registry.{name} is missing; the pipeline's gate needs it")
    verdict = registry.gate_verdict(registry.read_eval_report(cfg.register.eval_report), cfg.register)
    passed = bool(verdict["passed"])
    reasons = verdict.get("reasons") or []
    if passed:
        return True, f"passed: knn_top1 {verdict.get('knn_top1')} on {verdict.get('dataset')}"
    return False, "; ".join(map(str, reasons)) or "below the gate"
