"""Root conftest: pytest hooks + the session-wide real-service fixtures (tests/services.py).

Area-specific fixtures live in each test subdirectory's own conftest.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # `import services` from any test module

from services import SERVICE_NOTES, mlflow_server, postgres_db, s3_server  # noqa: F401


def pytest_terminal_summary(terminalreporter) -> None:
    for note in SERVICE_NOTES:
        terminalreporter.write_line(f"note: {note}")
