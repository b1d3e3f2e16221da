"""The registry gate in a pipeline step's log: one line from `dinoflow register`'s result.

Kubeflow runs `register` after every `evaluate` (no `dsl.If`): the stage applies the gate itself
(`dinoflow.registry.gate`: floors, then the challenge against the champion), registers every
candidate and moves the alias only when the gate passes — the same as under DVC.
"""

from __future__ import annotations

from typing import Any, Mapping


def gate_line(result: Mapping[str, Any]) -> str:
    """`dinoflow register`'s summary → "registry gate passed: version 3 is champion (models:/…@champion)" or why not."""
    gate = result.get("gate") or {}
    name = result.get("model_name", "?")
    version = result.get("version")
    if not result.get("registered"):
        return f"registry gate {'passed' if gate.get('passed') else 'not passed'}; nothing registered: {result.get('note', '')}"
    if gate.get("passed"):
        return f"registry gate passed: {name} version {version} is {result.get('alias')} ({result.get('alias_uri')})"
    holder = result.get("alias_version")
    stays = f"{result.get('alias')} stays on version {holder}" if holder else f"no {result.get('alias')} yet"
    return f"registry gate not passed: {name} version {version} registered as a candidate, {stays}: " + "; ".join(
        map(str, gate.get("reasons") or [])
    )
