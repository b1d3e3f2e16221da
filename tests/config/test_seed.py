"""The top-level `seed` drives every stage's seed; a stage's own seed, when set, overrides it.

The config half is checked on the resolved `Config`; the other half runs each seeded stage for real
on the tiny pipeline (tests/tiny_pipeline.py), each time on the same upstream outputs, and checks
that its output changes with the top-level seed and comes back when the stage's own seed pins it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tiny_pipeline import TINY_REGISTRY_PIPELINE

from dinoflow.config import (
    DEFAULT_SEED,
    SEEDED_SECTIONS,
    Config,
    ConfigError,
    CurateConfig,
    dump_config,
    load_config,
    stage_seed,
)
from dinoflow.config.stages import SECTIONS
from dinoflow.stages import run_stage

ROOT = Path(__file__).resolve().parents[2]
SEEDED_STAGES = [stage for stage, section in SECTIONS.items() if section in SEEDED_SECTIONS]


def test_top_level_seed_reaches_every_stage_unless_the_stage_sets_its_own():
    cfg = load_config(ROOT / "params.yaml", ["seed=7", "pretrain.seed=3"])
    assert {s: getattr(cfg, s).seed for s in SEEDED_SECTIONS} == {
        "demo": 7,
        "curate": 7,
        "pretrain": 3,
        "distill": 7,
        "evaluate": 7,
    }
    # what `dinoflow config` prints and what is saved beside checkpoints: the seed that runs
    dumped = yaml.safe_load(dump_config(cfg))
    assert dumped["distill"]["seed"] == 7 and dumped["pretrain"]["seed"] == 3
    # a stage seed set to the top-level value is still its own: it stays when the top level moves
    assert load_config(None, ["seed=5", "curate.seed=0"]).curate.seed == 0


def test_a_section_built_on_its_own_takes_the_top_level_default_seed():
    # a library call or a test builds one section without a Config to resolve its seed from
    assert CurateConfig().seed is None
    assert stage_seed(CurateConfig().seed) == DEFAULT_SEED == Config().seed == Config().curate.seed
    assert stage_seed(CurateConfig(seed=9).seed) == 9


def test_params_yaml_leaves_the_stage_seeds_unset():
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "seed" in tree and all("seed" not in (tree.get(s) or {}) for s in SEEDED_SECTIONS)


def test_a_bad_stage_seed_is_named():
    with pytest.raises(ConfigError, match=r"distill\.seed"):
        load_config(None, ["distill.seed=-1"])


def test_dvc_stages_depend_on_the_top_level_seed():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, section in SECTIONS.items():
        want = ["seed", section] if section in SEEDED_SECTIONS else [section]
        assert spec[stage]["params"] == want, stage


# ---------------------------------------------------------------- each stage's output follows the seed


def _upstream(base: Path) -> list[str]:
    """Overrides that make each stage read its inputs from `base` (the seed-0 run). Curation runs on
    the 200 seed images alone (no retrieval, no eval sets): its seed still picks the k-means starts."""
    d = base / "data"
    return [
        f"curate.sources=[{d}/demo/seeds]",
        "curate.seeds=null",
        "curate.retrieval=none",
        "curate.eval_sets=[]",
        f"pretrain.data={d}/curated",
        f"distill.data={d}/curated",
        f"distill.teacher={base}/models/teacher",
        f"evaluate.demo_dir={d}/demo",
        f"evaluate.models={{teacher: {base}/models/teacher/backbone.pth, student: {base}/models/student/backbone.pth}}",
    ]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _weights(path: Path) -> dict[str, list]:
    from dinoflow.models import load_backbone

    return {k: v.tolist() for k, v in load_backbone(path).state_dict().items() if torch.is_floating_point(v)}


def _output(stage: str, run: Path):
    """What a stage produced in `run`, in a form that compares by value."""
    if stage == "demo-data":
        return _tree_digest(run / "data/demo")
    if stage == "curate":
        return json.dumps(pq.read_table(run / "data/curated/manifest.parquet").to_pydict())  # NaN == NaN as text
    if stage == "pretrain":
        return _weights(run / "models/teacher/backbone.pth")
    if stage == "distill":
        return _weights(run / "models/student/backbone.pth")
    report = json.loads((run / "reports/eval.json").read_text())
    return {m: v for m, v in report.items() if not m.startswith("_")}


@pytest.mark.slow
def test_each_stage_output_follows_the_top_level_seed_and_its_own_seed_overrides(tmp_path, monkeypatch):
    tiny = [
        *TINY_REGISTRY_PIPELINE,
        "tracking.enabled=false",
        "distill.train.epochs=1",
        "evaluate.baselines=[random_init]",
    ]

    def run(name: str, stage: str, overrides: list[str]) -> Path:
        where = tmp_path / name
        where.mkdir(exist_ok=True)
        monkeypatch.chdir(where)
        run_stage(stage, load_config(ROOT / "params.yaml", [*tiny, *overrides]))
        return where

    base = tmp_path / "seed0"
    for stage in SEEDED_STAGES:  # the whole tiny pipeline at seed 0: every stage's reference output
        run("seed0", stage, _upstream(base))
    for stage in SEEDED_STAGES:
        section = SECTIONS[stage]
        moved = run(f"{stage}-seed1", stage, [*_upstream(base), "seed=1"])
        pinned = run(f"{stage}-seed1-own0", stage, [*_upstream(base), "seed=1", f"{section}.seed=0"])
        reference = _output(stage, base)
        assert _output(stage, moved) != reference, f"{stage}: the top-level seed did not change its output"
        assert _output(stage, pinned) == reference, f"{stage}: {section}.seed=0 did not override the top-level seed"
