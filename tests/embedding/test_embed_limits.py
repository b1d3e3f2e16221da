"""`dinoflow embed` within the `serving` bounds: an image whose resize would cost more is skipped
with the reason, before any pixel is resized; memory measured as the peak RSS of the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peak_rss import run_measured

from dinoflow.embedding.limits import Limits, OverLimit, check_image, check_request, resized_shape
from dinoflow.embedding.parts import read_embeddings
from dinoflow.models import build_backbone, export_backbone

from .test_embed import encode, pictures

# A skipped 1×400000 PNG must cost no more than the two good images beside it: before the bounds
# its resize to a 28-px shorter side made a 28×11,200,000 float image (3.7 GB).
SKIPPED_GROWTH_MIB = 64


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    torch.manual_seed(0)
    model = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    return export_backbone(model, tmp_path_factory.mktemp("model") / "backbone.pth")


def _embed_measured(pth, src, out, tmp_path):
    cmd = ["-m", "dinoflow", "embed", str(pth), str(src), "-o", str(out)]
    r = run_measured(cmd + ["--image-size", "28", "--resize-ratio", "1.0", "--no-progress"], tmp_path, 300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout), r.peak_mib


def test_a_wide_image_is_a_skipped_row_and_costs_nothing(pth, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for i, a in enumerate(pictures(2)):
        (good / f"{i}.png").write_bytes(encode(a))
    _, base = _embed_measured(pth, good, tmp_path / "good.parquet", tmp_path)
    wide = encode(np.zeros((1, 400_000), np.uint8))
    assert len(wide) < 1000
    (good / "wide.png").write_bytes(wide)
    summary, peak = _embed_measured(pth, good, tmp_path / "out.parquet", tmp_path)
    assert summary["rows"] == 2 and summary["skipped"] == 1
    skipped = json.loads((tmp_path / "out.skipped.json").read_text())
    assert skipped[0]["uid"] == "wide.png"
    assert skipped[0]["reason"].startswith("over_limit: 400000x1 has aspect ratio 4e+05 > serving.max_aspect_ratio 20")
    assert read_embeddings(tmp_path / "out.parquet")[0] == ["0.png", "1.png"]
    assert peak - base < SKIPPED_GROWTH_MIB, f"embed peaked at {peak:.0f} MiB with the wide image, {base:.0f} without"


def test_the_serving_section_sets_the_bounds(pth, tmp_path, capsys):
    from dinoflow.cli import main

    src = tmp_path / "images"
    src.mkdir()
    (src / "a.png").write_bytes(encode(np.zeros((30, 90), np.uint8)))  # aspect ratio 3
    (tmp_path / "params.yaml").write_text("serving:\n  max_aspect_ratio: 2.5\n")
    args = ["embed", str(pth), str(src), "--image-size", "28", "--resize-ratio", "1", "--no-progress"]
    assert main([*args, "-o", str(tmp_path / "o.parquet"), "-c", str(tmp_path / "params.yaml")]) == 1
    assert "no image could be embedded (1 skipped" in capsys.readouterr().err
    assert "serving.max_aspect_ratio 2.5" in (tmp_path / "o.skipped.json").read_text()
    (tmp_path / "bad.yaml").write_text("serving:\n  max_aspect_ratio: 0.5\n")
    assert main([*args, "-o", str(tmp_path / "p.parquet"), "-c", str(tmp_path / "bad.yaml")]) == 1
    assert "serving.max_aspect_ratio" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((10_000, 10_000), "100,000,000 pixels > serving.max_image_pixels"),
        ((21, 1), "aspect ratio 21 > serving.max_aspect_ratio 20"),
        ((3000, 200), "resizes to 3840x256 = 983,040 pixels > serving.max_resized_pixels 900,000"),
    ],
)
def test_each_bound_is_named(size, message):
    limits = Limits(max_resized_pixels=900_000)
    with pytest.raises(OverLimit, match=message):
        check_image(*size, limits, 224, 256 / 224)
    check_image(2000, 200, limits, 224, 256 / 224)  # 2560x256: within every bound
    assert resized_shape(1, 400_000, 28, 1.0) == (28, 11_200_000)


def test_the_request_total_is_bounded():
    limits = Limits(max_request_pixels=1000)
    check_request([(20, 25), None, (20, 25)], limits, 28, 1.0)
    with pytest.raises(
        OverLimit, match="the request's 3 images hold 1,500 decoded pixels > serving.max_request_pixels"
    ):
        check_request([(20, 25)] * 3, limits, 28, 1.0)
    with pytest.raises(OverLimit, match="image 1 of the request: over_limit"):
        check_request([(20, 25), (1, 100)], limits, 28, 1.0)


def test_the_defaults_are_the_config_defaults():
    from dinoflow.config import ServingConfig
    from dinoflow.embedding.mlflow_model import preprocess_settings

    assert Limits.from_settings(ServingConfig()) == Limits() == Limits.from_settings({"image_size": 28})
    assert Limits.from_settings(preprocess_settings(None)) == Limits()  # what a registered model carries
