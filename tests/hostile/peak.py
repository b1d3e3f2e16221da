"""Run a snippet in a fresh interpreter and measure its peak RSS (what memory bounds in tests use)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# VmHWM of the fresh process, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
# (the pytest process, hundreds of MiB) across exec, so a child would never read below it.
_EPILOGUE = """
import json as _json, re as _re
_peak = int(_re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
print(_json.dumps({"result": RESULT, "peak_mib": _peak}))
"""


def run_measured(snippet: str, timeout: float = 300) -> tuple[object, float]:
    """(the value the snippet leaves in `RESULT`, JSON-able; peak RSS of the process in MiB)."""
    code = textwrap.dedent(snippet) + _EPILOGUE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"measured snippet failed ({out.returncode}):\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["result"], got["peak_mib"]
