"""The evaluate stage: clear errors for missing inputs, the random-init baseline, an end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from dinoflow.config import load_config
from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.candidates import build_random_init
from dinoflow.evaluation.datasets import EvalSplit, LabelledImages
from dinoflow.evaluation.report import ENTRY_KEYS, check_eval_report
from dinoflow.evaluation.run import eval_set_fingerprint, evaluate
from dinoflow.models import build_backbone, export_backbone


def _cfg(tmp_path, *extra):
    models = f"{{teacher: {tmp_path}/teacher/backbone.pth, student: {tmp_path}/student/backbone.pth}}"
    return load_config(
        "params.yaml",
        [
            f"evaluate.models={models}",
            f"evaluate.report_dir={tmp_path}/reports",
            "tracking.enabled=false",
            "evaluate.progress=false",
            *extra,
        ],
    )


def test_missing_model_names_path_and_stage(tmp_path):
    with pytest.raises(DinoflowError) as e:
        evaluate(_cfg(tmp_path))
    msg = str(e.value)
    assert f"{tmp_path}/teacher/backbone.pth" in msg and "pretrain" in msg
    assert f"{tmp_path}/student/backbone.pth" in msg and "distill" in msg
    assert not (tmp_path / "reports").exists()


def test_random_init_copies_the_architecture_with_its_own_layerscale():
    ref = build_backbone("vit_mini", patch_size=7, img_size=28, layerscale_init=1e-5)
    ev = load_config("params.yaml").evaluate
    a, b = build_random_init(ref, ev), build_random_init(ref, ev)
    assert a.config.arch == "vit_mini" and a.config.patch_size == 7
    assert torch.all(a.blocks[0].ls1.gamma == ev.random_init_layerscale)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # seeded
    # LayerScale 1.0 keeps images apart; 1e-5 makes every CLS almost the same (a known pitfall of small ViTs).
    x = torch.randn(8, 3, 28, 28)
    spread = lambda m: torch.nn.functional.normalize(m(x), dim=1).std(0).sum()  # noqa: E731
    with torch.no_grad():
        assert spread(a) > 10 * spread(ref.eval())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:k-NN")
def test_evaluate_end_to_end(tmp_path):
    torch.manual_seed(0)
    export_backbone(
        build_backbone("vit_mini", patch_size=7, img_size=28, layerscale_init=0.1),
        tmp_path / "teacher" / "backbone.pth",
    )
    export_backbone(
        build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=0.1),
        tmp_path / "student" / "backbone.pth",
    )
    cfg = _cfg(
        tmp_path,
        "evaluate.max_train=150",
        "evaluate.max_test=50",
        "evaluate.linear_epochs=2",
        "evaluate.linear_lrs=[0.1]",
        "evaluate.logreg_cs=[1.0]",
        "evaluate.logreg_max_iter=50",
        "evaluate.n_pca_images=2",
        "evaluate.dense_epochs=2",
        "evaluate.dense_lrs=[0.01]",
    )
    out = evaluate(cfg)
    rep = json.loads((tmp_path / "reports" / "eval.json").read_text())
    # one candidate order everywhere: the trained models as configured, then the baselines
    order = ["teacher", "student", "random_init", "raw_pixels"]
    assert list(out["results"]) == list(out["models"]) == list(out["dense"]) == order
    assert all(list(e) == list(ENTRY_KEYS) for per in out["results"].values() for e in per.values())
    assert {k: v for k, v in rep.items() if not k.startswith("_")} == out["results"]
    check_eval_report(rep)
    dense = rep.pop("_dense")
    assert set(dense) == {"teacher", "student", "random_init", "raw_pixels"}
    for per_ds in dense.values():
        assert per_ds["digit_mosaics"]["task"] == "segmentation" and 0 <= per_ds["digit_mosaics"]["miou"] <= 1
        assert per_ds["digit_depth"]["task"] == "depth" and per_ds["digit_depth"]["rmse"] > 0
    assert out["dense"] == dense
    prov = rep.pop("_provenance")  # what was evaluated: register checks it
    assert prov["models"] == {
        n: {"path": str(tmp_path / n / "backbone.pth"), "sha256": file_sha256(tmp_path / n / "backbone.pth")}
        for n in ("teacher", "student")
    }
    assert set(prov["datasets"]) == {"mnist", "digits"} and prov["datasets"]["mnist"]["n_test"] == 50
    assert (
        prov["dense_datasets"]["digit_depth"]["n_test"] == 50
        and prov["dense_datasets"]["digit_depth"]["task"] == "depth"
    )
    assert prov["datasets"]["mnist"]["fingerprint"] != prov["datasets"]["digits"]["fingerprint"]
    assert set(rep) == {"teacher", "student", "random_init", "raw_pixels"}
    for per_ds in rep.values():
        assert set(per_ds) == {"mnist", "digits"}
        for e in per_ds.values():
            assert tuple(sorted(e)) == tuple(sorted(ENTRY_KEYS)) and set(e["knn"]) == {"10", "20", "100", "200"}
    assert rep["raw_pixels"]["mnist"]["knn_top1"] > 0.6  # pixels already classify MNIST well
    assert rep["student"]["mnist"]["linear_best"]["n_last_blocks"] == 1  # vit_pico has 3 blocks: 4 is skipped
    assert "vit_mini" in out["models"]["random_init"] and "LayerScale init 1" in out["models"]["random_init"]
    assert out["datasets"]["mnist"] == {"n_train": 150, "n_test": 50, "n_classes": 10}
    md = (tmp_path / "reports" / "eval.md").read_text()
    assert "| random_init |" in md and "k-NN k clipped" in md  # k = 200 > 150 train samples
    assert "## digit_mosaics: segmentation (150 train / 50 test)" in md and "## digit_depth: depth" in md
    names = sorted(p.name for p in (tmp_path / "reports").glob("*.png"))
    assert names == [
        "eval_cls_map_digits.png",
        "eval_cls_map_mnist.png",
        "eval_dense_digit_depth.png",
        "eval_dense_digit_mosaics.png",
        "eval_patch_pca_digits.png",
        "eval_patch_pca_mnist.png",
    ]


def test_eval_set_fingerprint_follows_images_labels_and_protocol():
    import numpy as np

    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), np.arange(6) % 2
    split = lambda im, lab: EvalSplit("s", LabelledImages(im[:4], lab[:4]), LabelledImages(im[4:], lab[4:]))  # noqa: E731
    ev = load_config("params.yaml").evaluate
    base = eval_set_fingerprint(split(imgs, labels), ev)
    assert base == eval_set_fingerprint(split(imgs.copy(), labels.copy()), ev) and len(base) == 64
    flipped = imgs.copy()
    flipped[5, 0, 0] ^= 1
    assert eval_set_fingerprint(split(flipped, labels), ev) != base  # one pixel of the test split
    assert eval_set_fingerprint(split(imgs, 1 - labels), ev) != base  # labels
    assert eval_set_fingerprint(split(imgs, labels), ev.model_copy(update={"ks": [10]})) != base  # protocol
    as_list = EvalSplit("s", LabelledImages(list(imgs[:4]), labels[:4]), LabelledImages(list(imgs[4:]), labels[4:]))
    assert eval_set_fingerprint(as_list, ev) == base  # how the loader held the images does not matter


def test_model_names_starting_with_underscore_are_reserved(tmp_path):
    cfg = _cfg(tmp_path, f"evaluate.models={{_provenance: {tmp_path}/x.pth}}")
    with pytest.raises(DinoflowError, match="reserved in eval.json"):
        evaluate(cfg)
