"""Step config (params text + overrides + artifact wiring), torchrun command lines, the gate's log line."""

from __future__ import annotations

import sys

import pytest

from dinoflow.errors import DinoflowError
from dinoflow.launch.gate import gate_line
from dinoflow.launch.options import LaunchOptions
from dinoflow.launch.steps import flat_metrics, publish, step_config
from dinoflow.launch.torchrun import run_torchrun, torchrun_argv


def test_wiring_wins_over_user_overrides_and_params():
    text = "curate: {out_dir: a, knn_k: 8}\n"
    cfg = step_config(text, ["curate.out_dir=b", "curate.knn_k=16"], {"curate.out_dir": "/art/c d"})
    assert cfg.curate.out_dir == "/art/c d" and cfg.curate.knn_k == 16


def test_wiring_values_keep_their_type():
    cfg = step_config("", [], {"evaluate.models": {"s": "/x/backbone.pth"}})
    assert cfg.evaluate.models == {"s": "/x/backbone.pth"}


# artifact paths a pipeline backend or a user's volume may hold: quotes, spaces, commas, brackets,
# YAML indicators, and a character outside the BMP (JSON escapes it as a surrogate pair, which a
# YAML reader turns into two lone surrogates: the old `-S` string encoding changed this path)
AWKWARD_PATHS = [
    "/mnt/a \"quoted\" 'dir', with [brackets] {braces}/x: y #z",
    "/mnt/&anchor *alias !tag %pct @at `tick` | > - ? ~ null",
    "/mnt/data \U0001f600 caf\u00e9/\u2028line sep",
    "yes",
]


@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_artifact_paths_arrive_exactly(path):
    cfg = step_config("curate: {knn_k: 8}\n", ["curate.knn_k=16"], {"curate.out_dir": path, "pretrain.data": path})
    assert cfg.curate.out_dir == path and cfg.pretrain.data == path and cfg.curate.knn_k == 16


def test_invalid_step_config_names_the_key():
    with pytest.raises(DinoflowError, match="pretrain.train.max_steps"):
        step_config("", ["pretrain.train.max_steps=0"])


def test_flat_metrics_keeps_finite_numbers_only():
    assert flat_metrics({"a": {"b": 1, "c": [0.5, "x", True, float("nan")]}, "d": None}) == {"a.b": 1.0, "a.c.0": 0.5}


def test_publish_copies_or_explains(tmp_path):
    (tmp_path / "r.html").write_text("x")
    publish(tmp_path / "r.html", tmp_path / "out" / "a.html")
    assert (tmp_path / "out" / "a.html").read_text() == "x"
    with pytest.raises(DinoflowError, match="did not write"):
        publish(tmp_path / "missing.html", tmp_path / "b.html")


def test_torchrun_argv_and_failure():
    argv = torchrun_argv("pretrain", "/c.yaml", nproc_per_node=4, python="py")
    assert argv[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc-per-node=4" in argv
    assert argv[-5:] == ["-m", "dinoflow", "pretrain", "-c", "/c.yaml"]
    with pytest.raises(DinoflowError, match="only pretrain, distill, curate"):
        torchrun_argv("evaluate", "/c.yaml", nproc_per_node=2)
    with pytest.raises(DinoflowError, match="status 3"):
        run_torchrun([sys.executable, "-c", "raise SystemExit(3)"])


@pytest.mark.parametrize(
    "nodes,gpus,mode",
    [(1, 0, "in-process"), (1, 1, "in-process"), (1, 8, "torchrun"), (2, 8, "trainjob"), (3, 0, "trainjob")],
)
def test_launch_mode_follows_resources(nodes, gpus, mode):
    assert LaunchOptions(num_nodes=nodes, gpus_per_node=gpus).mode() == mode


def test_gate_line_says_what_register_did():
    base = {"model_name": "m", "alias": "champion", "registered": True, "version": "3"}
    passed = {**base, "gate": {"passed": True, "reasons": []}, "alias_version": "3", "alias_uri": "models:/m@champion"}
    assert gate_line(passed) == "registry gate passed: m version 3 is champion (models:/m@champion)"
    failed = {
        **base,
        "gate": {"passed": False, "reasons": ["retention 0.8 < 0.95", "knn_top1 0.7 < champion's 0.8"]},
        "alias_version": "2",
    }
    assert gate_line(failed) == (
        "registry gate not passed: m version 3 registered as a candidate, champion stays on "
        "version 2: retention 0.8 < 0.95; knn_top1 0.7 < champion's 0.8"
    )
    assert "no champion yet" in gate_line({**failed, "alias_version": None})
    off = {"registered": False, "gate": {"passed": True}, "note": "tracking disabled"}
    assert gate_line(off) == "registry gate passed; nothing registered: tracking disabled"
