"""A snippet's result and its process's peak RSS, through the one measurement in tests/peak_rss.py."""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path

from peak_rss import run_measured as run_peak

_EPILOGUE = """
import json as _json
print(_json.dumps({"result": RESULT}))
"""


def run_measured(snippet: str, timeout: float = 300) -> tuple[object, float]:
    """(the value the snippet leaves in `RESULT`, JSON-able; peak RSS of the process in MiB)."""
    with tempfile.TemporaryDirectory(prefix="dinoflow-peak-") as tmp:
        m = run_peak(["-c", textwrap.dedent(snippet) + _EPILOGUE], Path(tmp), timeout_s=timeout)
    if m.returncode != 0:
        raise AssertionError(f"measured snippet failed ({m.returncode}):\n{m.stderr[-3000:]}")
    return json.loads(m.stdout.strip().splitlines()[-1])["result"], m.peak_mib
