"""The user-facing documentation stays true to the code and to itself: README.md shows the two
commands and stays short (the rest lives in docs/), the configuration reference in
docs/configuration.md is exactly what the config model generates (every key, its type and
default), the demo numbers are the recorded run's (benchmarks/demo_results.py,
docs/demo-results.json), docs/architecture.md draws the layers tests/test_imports.py holds, and
every relative link in README.md and docs/*.md reaches a file (and a heading, when it names one)
inside the repository."""

import copy
import json
import re
import sys
from pathlib import Path

from dinoflow.config.reference import BEGIN, END, PAGE, leaf_keys, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_PAGE = ROOT / PAGE
MAX_README_LINES = 300


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_is_at_most_300_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines: move detail into a page under docs/ and link it"


def test_config_reference_is_current():
    text = CONFIG_PAGE.read_text()
    assert BEGIN in text and END in text, f"{PAGE} lacks the generated configuration reference"
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert current == reference_markdown(), "regenerate it: python -m dinoflow.config.reference --write"


def test_readme_links_the_configuration_reference():
    assert f"]({PAGE})" in README.read_text()


def test_every_params_yaml_key_is_documented():
    import yaml

    documented = set(leaf_keys())

    def keys(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in documented:  # a section, not a dict-valued key
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    text = CONFIG_PAGE.read_text()
    for key in keys(params):
        assert key in documented, f"params.yaml key {key} is not in the config model"
        assert f"`{key}`" in text, f"params.yaml key {key} is not in {PAGE}"


# ---------------------------------------------------------------- links between the pages

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](image)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def _anchors(md: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file: lower case, punctuation dropped, spaces to -."""
    text = FENCE.sub("", md.read_text())
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def broken_links(md: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `md` (outside code) whose file is missing or outside `root`, or whose
    `#anchor` names no heading of a Markdown target."""
    problems = []
    for target in LINK.findall(CODE.sub("", FENCE.sub("", md.read_text()))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not a file of the repository
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md.resolve()
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: {dest.name} has no heading #{anchor}")
    return problems


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_reaches_a_file_in_the_repository():
    pages = _pages()
    assert len(pages) > 5 and CONFIG_PAGE in pages  # the scan sees the docs
    broken = {str(p.relative_to(ROOT)): b for p in pages if (b := broken_links(p))}
    assert broken == {}


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Some heading (`x/y`)\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#some-heading-xy) [web](https://example.com/x.md) [self](#top)\n"
        "# Top\n[gone](c.md) [up](../../outside.md) [bad anchor](b.md#nope) ![figure](fig.png)\n"
        "```\n[in code](missing.md)\n```\n`[inline code](missing.md)`\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "c.md: no such file",
        "../../outside.md: outside the repository",
        "b.md#nope: b.md has no heading #nope",
        "fig.png: no such file",
    ]


# ---------------------------------------------------------------- the architecture page


def test_the_architecture_page_draws_the_layers_the_import_test_holds():
    """docs/architecture.md's drawing, top first, is tests/test_imports.py::LAYERS read top down."""
    from test_imports import LAYERS

    text = (ROOT / "docs" / "architecture.md").read_text()
    drawing = FENCE.findall(text[text.index("## The layers") :])[0].splitlines()[1:-1]
    drawn = [{f"dinoflow.{n.strip()}" for n in re.split(r"\s{2,}", line)[0].split(",")} for line in drawing]
    held = [set(group) - {"dinoflow"} for group in reversed(LAYERS)]
    assert drawn == held, "draw the layers of tests/test_imports.py::LAYERS in docs/architecture.md"


# ---------------------------------------------------------------- the demo's numbers

sys.path.insert(0, str(ROOT / "benchmarks"))
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


def test_the_recorded_demo_teacher_beats_its_random_init_on_both_dense_sets():
    """DINOv2's dense claim at the demo's scale, on the measured run: the pretrained teacher's patch tokens
    beat the same architecture at random init on segmentation (mIoU) and on depth (RMSE)."""
    res = json.loads(demo_results.RESULTS.read_text())
    assert demo_results.teacher_beats_random_init(res) == {"digit_mosaics": True, "digit_depth": True}


def test_the_check_names_a_dense_cell_that_moved():
    res = json.loads(demo_results.RESULTS.read_text())
    text = demo_results.render(res)
    moved = copy.deepcopy(res)
    moved["dense"]["teacher"]["digit_depth"]["rmse"] += 0.01
    problems = demo_results.disagreements(text, moved)
    assert len(problems) == 1 and problems[0].startswith("teacher digit_depth"), problems
    worse = copy.deepcopy(res)
    worse["dense"]["teacher"]["digit_depth"]["rmse"] = worse["dense"]["random_init"]["digit_depth"]["rmse"] + 0.1
    assert demo_results.teacher_beats_random_init(worse)["digit_depth"] is False


def test_record_reads_a_finished_demo_run(tmp_path, monkeypatch):
    """`record` takes its numbers from the run's own files: eval and curation reports, the manifest
    scored against the planted truth, the backbones' parameter counts (real files, tiny)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dinoflow.config import load_config
    from dinoflow.models import vit
    from dinoflow.models.weights import export_backbone

    params = str(ROOT / "params.yaml")
    cfg = load_config(params)
    monkeypatch.chdir(tmp_path)
    Path("reports").mkdir()
    entry = {"knn_top1": 0.5, "linear_top1": 0.25}
    report: dict = {m: {"mnist": entry, "digits": entry} for m in ("teacher", "student", "random_init", "raw_pixels")}
    seg = {"task": "segmentation", "miou": 0.2, "pixel_acc": 0.7, "lr": 0.1}
    depth = {"task": "depth", "rmse": 0.6, "abs_rel": 0.1, "delta1": 0.9, "lr": 0.01}
    report["_dense"] = {"teacher": {"digit_mosaics": seg, "digit_depth": depth}}
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
    assert res["dense"] == {"teacher": {"digit_mosaics": {"miou": 0.2}, "digit_depth": {"rmse": 0.6}}}
    assert "| 0.200 | 0.600 |" in rendered
