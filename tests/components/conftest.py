import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import standin_stages`


@pytest.fixture
def standin_stages(monkeypatch, tmp_path):
    """Route the stage table and the fan-out functions to the stand-ins; returns the log reader."""
    import standin_stages as s

    import dinoflow.stages

    log = tmp_path / "standin.log"
    monkeypatch.setenv(s.LOG_ENV, str(log))
    import dinoflow.launch.curation_fanout

    for name, target in s.stage_table().items():
        monkeypatch.setitem(dinoflow.stages.STAGES, name, target)
    for name in s.FANOUT_FUNCTIONS:
        monkeypatch.setattr(dinoflow.launch.curation_fanout, name, getattr(s, name))

    def read() -> dict:
        import json

        return {r["stage"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}

    return read
