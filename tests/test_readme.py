"""README.md stays true to the code: the two commands, a configuration reference that is exactly
what the config model generates (every key, its type and default), and demo numbers that are the
recorded run's (benchmarks/demo_results.py, docs/demo-results.json)."""

import copy
import json
import sys
from pathlib import Path

from dinoflow.config.reference import BEGIN, END, leaf_keys, reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_config_reference_is_current():
    text = README.read_text()
    assert BEGIN in text and END in text, "README.md lacks the generated configuration reference"
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert current == reference_markdown(), "regenerate it: python -m dinoflow.config.reference --write"


def test_every_params_yaml_key_is_documented():
    import yaml

    documented = set(leaf_keys())

    def keys(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in documented:  # a section, not a dict-valued key
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    params = yaml.safe_load((README.parent / "params.yaml").read_text())
    text = README.read_text()
    for key in keys(params):
        assert key in documented, f"params.yaml key {key} is not in the config model"
        assert f"`{key}`" in text, f"params.yaml key {key} is not in README.md"


# ---------------------------------------------------------------- the demo's numbers

sys.path.insert(0, str(README.parent / "benchmarks"))
import demo_results  # noqa: E402


def test_readme_demo_numbers_are_the_recorded_run():
    """README's demo table and curation count agree with docs/demo-results.json (TOLERANCE points)."""
    res = json.loads(demo_results.RESULTS.read_text())
    assert demo_results.disagreements(README.read_text(), res) == []
    assert demo_results.block(README.read_text()) == demo_results.render(res), (
        "regenerate it: python benchmarks/demo_results.py render --write"
    )


def test_the_check_fails_when_readme_and_the_record_disagree():
    res = json.loads(demo_results.RESULTS.read_text())
    text = demo_results.render(res)
    teacher = res["eval"]["teacher"]["mnist"]["knn_top1"]
    moved = copy.deepcopy(res)
    moved["eval"]["teacher"]["mnist"]["knn_top1"] = teacher - 0.028  # the fresh-run drift users saw
    moved["curation"]["kept"] += 2
    problems = demo_results.disagreements(text, moved)
    assert len(problems) == 2 and problems[0].startswith("teacher mnist knn_top1") and "kept" in problems[1]
    # rounding to the table's one decimal stays inside the tolerance
    nudged = copy.deepcopy(res)
    nudged["eval"]["teacher"]["mnist"]["knn_top1"] = teacher + 0.0004
    assert demo_results.disagreements(text, nudged) == []


def test_record_reads_a_finished_demo_run(tmp_path, monkeypatch):
    """`record` takes its numbers from the run's own files: eval and curation reports, the manifest
    scored against the planted truth, the backbones' parameter counts (real files, tiny)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dinoflow.config import load_config
    from dinoflow.models import vit
    from dinoflow.models.weights import export_backbone

    params = str(README.parent / "params.yaml")
    cfg = load_config(params)
    monkeypatch.chdir(tmp_path)
    Path("reports").mkdir()
    entry = {"knn_top1": 0.5, "linear_top1": 0.25}
    report = {m: {"mnist": entry, "digits": entry} for m in ("teacher", "student", "random_init", "raw_pixels")}
    Path("reports/eval.json").write_text(json.dumps(report))
    funnel = [{"step": "input", "remaining": 3}, {"step": "corrupt", "remaining": 2}]
    Path("reports/curation.json").write_text(json.dumps({"funnel": funnel, "kept": 2}))
    pool = Path(cfg.curate.sources[0])
    pool.mkdir(parents=True)
    truth = {
        "pool": {
            "a.png": {"kind": "original"},
            "b.png": {"kind": "exact_dup", "of": "a.png"},
            "c.png": {"kind": "corrupt"},
        }
    }
    (pool.parent / "ground_truth.json").write_text(json.dumps(truth))
    Path(cfg.curate.out_dir).mkdir(parents=True)
    manifest = {"uid": ["a", "b", "c"], "path": ["a.png", "b.png", "c.png"], "status": ["kept", "exact_dup", "corrupt"]}
    manifest["duplicate_of"] = ["", "a", ""]
    pq.write_table(pa.table(manifest), Path(cfg.curate.out_dir) / "manifest.parquet")
    sizes = {}
    for name, path in cfg.evaluate.models.items():
        model = vit.build_backbone(arch="vit_pico" if name == "student" else "vit_mini", patch_size=7, img_size=28)
        export_backbone(model, path)
        sizes[name] = sum(p.numel() for p in model.parameters())
    res = demo_results.record(params)
    assert res["eval"]["student"]["digits"] == entry and res["curation"]["kept"] == 2
    assert res["curation"]["inputs"] == 3 and res["curation"]["duplicate_recall"] == 1.0
    assert res["curation"]["corrupt_reported"] == res["curation"]["corrupt_total"] == 1
    assert res["params"] == {**sizes, "random_init": sizes["teacher"]} and sizes["teacher"] > sizes["student"]
    rendered = demo_results.render(res)
    assert "| 50.0 | 25.0 | 50.0 | 25.0 |" in rendered and "2 images kept" in rendered
