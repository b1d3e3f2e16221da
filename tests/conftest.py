"""Root conftest: pytest hooks + the session-wide real-service fixtures (tests/services.py).

Area-specific fixtures live in each test subdirectory's own conftest.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import services` from any test module

from services import SERVICE_NOTES, mlflow_server, postgres_db, s3_server  # noqa: F401

# Process-wide settings a stage run writes into os.environ: MLflow's set_tracking_uri exports
# MLFLOW_TRACKING_URI (for child processes), tracking caps MLFLOW_HTTP_REQUEST_*, a parent run
# exports DINOFLOW_PARENT_RUN_ID. Within one stage process that is intended; between tests it
# would point the next test at a server an earlier one killed.
_PROCESS_ENV = ("MLFLOW_", "DINOFLOW_")


@pytest.fixture(autouse=True)
def _restore_process_env():
    before = {k: v for k, v in os.environ.items() if k.startswith(_PROCESS_ENV)}
    yield
    for k in [k for k in os.environ if k.startswith(_PROCESS_ENV) and k not in before]:
        del os.environ[k]
    os.environ.update(before)


def pytest_terminal_summary(terminalreporter) -> None:
    for note in SERVICE_NOTES:
        terminalreporter.write_line(f"note: {note}")
