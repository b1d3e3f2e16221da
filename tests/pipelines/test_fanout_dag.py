"""The curation fan-out (pipelines/curation_fanout.py) through kfp.local on the demo data (slow).

Plan → ParallelFor decode + embed tasks → the global step gives the same curated bytes (manifest,
completeness record, shards) as `dinoflow curate` in one process.
"""

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from dinoflow.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_fanout_dag_gives_the_curated_bytes_of_one_process(tmp_path, monkeypatch):
    from kfp import dsl, local

    from dinoflow.demo.pool import build_demo
    from pipelines.curation_fanout import curation_fanout

    demo = tmp_path / "demo"
    build_demo(load_config(None, [f"demo.out_dir={demo}", "tracking.enabled=false"]))
    overrides = [
        f"curate.sources=[{demo}/pool]",
        f"curate.seeds={demo}/seeds",
        f"curate.eval_sets=[{demo}/eval]",
        "curate.chunk_size=700",
        "curate.shard_size=800",
        "tracking.enabled=false",
    ]
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))

    @dsl.pipeline
    def outer(params_yaml: str, overrides: List[str]):
        curation_fanout(params_yaml=params_yaml, overrides=overrides, max_groups=3)

    outer(params_yaml=(ROOT / "params.yaml").read_text(), overrides=overrides)
    (curated,) = [p for p in (tmp_path / "kfp").rglob("curated") if p.parent.name == "curate-global"]
    tasks = sorted(p.parent.name for p in (tmp_path / "kfp").rglob("embeddings") if p.is_dir())
    assert len(tasks) == 3, tasks  # three decode + embed tasks ran

    one = tmp_path / "one"
    args = [
        x for o in overrides + [f"curate.out_dir={one}/curated", f"curate.report_dir={one}/reports"] for x in ("-S", o)
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "dinoflow", "curate", "-c", str(ROOT / "params.yaml"), *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {p.name: p.read_bytes() for p in (one / "curated").iterdir() if p.is_file()}
    got = {p.name: p.read_bytes() for p in curated.iterdir() if p.is_file()}
    assert got == expected and "manifest.json" in got
    assert not (curated / ".curate").exists()  # the embeddings stay in the tasks' outputs, not in the dataset
