"""Report: eval.json schema, Markdown table, PCA figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dinoflow.evaluation.report import (
    ENTRY_KEYS,
    check_eval_report,
    eval_entry,
    pca_rgb,
    render_markdown,
    report_k,
    save_cls_map_png,
    save_patch_pca_png,
    write_eval_json,
)

KNN = {
    10: {"top1": 0.9, "top5": 0.99},
    20: {"top1": 0.91, "top5": 0.995},
    100: {"top1": 0.8, "top5": 0.97},
    200: {"top1": 0.7, "top5": 0.96},
}


def test_entry_has_the_schema_and_reports_k20():
    e = eval_entry(KNN, 0.93, {"n_last_blocks": 4, "avgpool": True, "lr": 0.01}, 0.92)
    assert tuple(e) == ENTRY_KEYS
    assert e["knn_top1"] == 0.91 and e["knn_top5"] == 0.995
    assert e["knn"] == {"10": 0.9, "20": 0.91, "100": 0.8, "200": 0.7}
    assert report_k([10, 50]) == 10 and report_k([5, 30]) == 30


def test_write_and_check(tmp_path):
    rep = {"teacher": {"mnist": eval_entry(KNN, 0.93, {"n_last_blocks": 1, "avgpool": False, "lr": 0.1}, 0.92)}}
    p = write_eval_json(tmp_path / "eval.json", rep)
    assert json.loads(p.read_text()) == rep
    bad = json.loads(p.read_text())
    bad["teacher"]["mnist"]["knn_top1"] = 91.0  # a percentage, not a fraction
    with pytest.raises(ValueError, match="fractions"):
        check_eval_report(bad)
    del bad["teacher"]["mnist"]["logreg_top1"]
    with pytest.raises(ValueError, match="keys"):
        check_eval_report(bad)


def test_provenance_is_written_beside_the_results_and_checked(tmp_path):
    from dinoflow.evaluation.report import PROVENANCE_KEY, split_eval_json

    rep = {"student": {"mnist": eval_entry(KNN, None, None, None)}}
    prov = {
        "models": {"student": {"path": "s.pth", "sha256": "0" * 64}},
        "datasets": {"mnist": {"fingerprint": "f" * 64}},
    }
    written = json.loads(write_eval_json(tmp_path / "eval.json", rep, prov).read_text())
    assert split_eval_json(written) == (rep, prov)
    check_eval_report(written)
    with pytest.raises(ValueError, match="needs a sha256"):
        check_eval_report({**rep, PROVENANCE_KEY: {"models": {"student": {"path": "s.pth"}}}})
    with pytest.raises(ValueError, match="non-empty mapping of models"):
        check_eval_report({PROVENANCE_KEY: prov})


def test_markdown_lists_every_model_and_value():
    rep = {
        m: {
            "mnist": eval_entry(
                KNN, 0.5 + i / 10, None if m == "raw_pixels" else {"n_last_blocks": 4, "avgpool": True, "lr": 0.01}, 0.4
            )
        }
        for i, m in enumerate(["teacher", "raw_pixels"])
    }
    md = render_markdown(rep, {"notes": ["k clipped"], "datasets": {"mnist": {"n_train": 4000, "n_test": 1000}}})
    assert "| teacher | 0.910 |" in md and "| raw_pixels |" in md and "0.600" in md
    assert "4 blk, avgpool on, lr 0.01" in md and "k clipped" in md and "4000 train / 1000 test" in md


def test_pca_rgb_recovers_structure(tmp_path):
    # Two patch types: the first component separates them, so their colours differ.
    g = torch.zeros(2, 4, 4, 16)
    g[:, :2] = 1.0
    g += 0.01 * torch.randn_like(g)
    rgb = pca_rgb(g)
    assert rgb.shape == (2, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[:, :2, :, 0] - rgb[:, 2:, :, 0]).abs().min() > 0.8
    fg = pca_rgb(g, foreground_threshold=0.5)
    assert (fg[:, 2:] == 0).all() or (fg[:, :2] == 0).all()  # one of the two groups is background
    imgs = [np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.uint8)]
    p = save_patch_pca_png(tmp_path / "pca.png", imgs, {"teacher": rgb})
    q = save_cls_map_png(tmp_path / "cls.png", {"a": torch.randn(30, 8), "b": torch.randn(30, 8)}, torch.arange(30) % 3)
    for f in (p, q):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
