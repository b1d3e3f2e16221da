"""The embedding pyfunc's input handling, requirements and example (no server; see tests/registry/ for those)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dinoflow.embedding.mlflow_model import REQUIREMENTS, as_images, example_images, requirements, signature


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_every_accepted_input_form_gives_the_same_images():
    grey = np.random.default_rng(0).integers(0, 256, (3, 12, 10), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    pngs = [_png(a) for a in grey]
    b64 = [base64.b64encode(p).decode() for p in pngs]
    assert as_images(grey) is not None and as_images(grey).shape == (3, 12, 10)
    assert as_images(grey.astype(np.int64)).dtype == np.uint8  # JSON delivers integers
    for form in (
        pd.DataFrame({"image": pngs}),
        pd.DataFrame({"x": b64}),
        np.array(pngs, dtype=object),
        np.array(b64),
        pngs,
        {"inputs": b64},
    ):
        decoded = as_images(form)
        assert len(decoded) == 3 and all(np.array_equal(d, r) for d, r in zip(decoded, rgb))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 4, 4), np.float32), "must be uint8"),
        (np.full((2, 4, 4), 300), "must be uint8"),
        (np.zeros((2, 4, 4, 5), np.uint8), "C in 1/3/4"),
        (np.zeros((4, 4), np.uint8), "batch"),
        (np.array([b"not an image"], dtype=object), "cannot decode an input image: not_an_image"),
        (np.array(["@@not base64@@"]), "must be a base64-encoded PNG/JPEG"),
    ],
)
def test_bad_inputs_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        as_images(bad)


def test_requirements_are_public_index_pins_of_every_import():
    reqs = requirements()
    assert [r.split("==")[0] for r in reqs] == list(REQUIREMENTS)
    assert all("==" in r and "+" not in r for r in reqs), reqs  # e.g. torch==2.13.0, never 2.13.0+cpu


def test_example_images_and_signature():
    a, b = (np.array(Image.open(io.BytesIO(p))) for p in example_images(28))
    assert a.shape == b.shape == (28, 28) and a.std() > 0 and b.std() > 0 and not np.array_equal(a, b)
    sig = signature(64).to_dict()
    assert '"shape": [-1, 64]' in sig["outputs"] and "pooled_patch_tokens" in sig["params"]


# ---------------------------------------------------------------- what one request may cost

# A request the model refuses must cost no more than answering a 28×28 image: the bounds are read
# from the headers, before any pixel is decoded or resized.
REFUSED_GROWTH_MIB = 64
# Ten 5000×5000 PNGs within raised limits, decoded one at a time: measured +355 MiB over a 28-px
# request (one decoded image and its float copy); decoding the whole batch first: +1013 MiB.
STREAMED_GROWTH_MIB = 600
PREDICT = """
import json, sys, types
import numpy as np
from mlflow.exceptions import MlflowException
from dinoflow.embedding.mlflow_model import EmbeddingModel

model = EmbeddingModel()
model.load_context(types.SimpleNamespace(artifacts={"backbone": sys.argv[1]}))
inputs = json.loads(open(sys.argv[2]).read())["inputs"]
try:
    out = model.predict(None, np.array(inputs, dtype=object))
    print(json.dumps({"status": 200, "shape": list(out.shape)}))
except MlflowException as e:
    print(json.dumps({"status": e.get_http_status_code(), "message": e.message[-800:]}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A registered model's `backbone` artifact as the server loads it (demo pre-processing: 28 px)."""
    import json

    import torch

    from dinoflow.config import config_from_dict
    from dinoflow.embedding.mlflow_model import PREPROCESS_FILE, preprocess_settings
    from dinoflow.models import build_backbone, export_backbone

    d = tmp_path_factory.mktemp("served") / "backbone"
    torch.manual_seed(0)
    export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0), d / "backbone.pth")

    def bundle(**serving) -> Path:
        cfg = config_from_dict({"evaluate": {"image_size": 28, "resize_ratio": 1.0}, "serving": serving})
        out = d.parent / f"bundle-{len(list(d.parent.iterdir()))}"
        out.mkdir()
        (out / "backbone.pth").symlink_to(d / "backbone.pth")
        (out / PREPROCESS_FILE).write_text(json.dumps(preprocess_settings(cfg)))
        return out

    return bundle


def _request(model_dir: Path, images: list[bytes], tmp_path: Path) -> tuple[dict, float]:
    """(the answer, peak RSS in MiB) of one predict call in a fresh process."""
    import json

    from peak_rss import run_measured

    body = tmp_path / f"request-{len(list(tmp_path.glob('request-*')))}.json"
    body.write_text(json.dumps({"inputs": [base64.b64encode(b).decode() for b in images]}))
    r = run_measured(["-c", PREDICT, str(model_dir), str(body)], tmp_path, 300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.peak_mib


def test_a_wide_image_is_refused_before_the_resize(served, tmp_path):
    """1×400000 px (a few hundred bytes): the resize of the shorter side to 28 px made it a
    28×11,200,000 float image (3.7 GB); refused by the aspect-ratio bound, costing nothing."""
    model = served()
    wide = _png(np.zeros((1, 400_000), np.uint8))
    assert len(wide) < 1000
    small, base = _request(model, [_png(np.zeros((28, 28), np.uint8))], tmp_path)
    assert small == {"status": 200, "shape": [1, 64]}
    answer, peak = _request(model, [wide], tmp_path)
    assert answer["status"] == 400, answer
    assert "image 0 of the request: over_limit: 400000x1 has aspect ratio" in answer["message"]
    assert "serving.max_aspect_ratio 20" in answer["message"]
    assert peak - base < REFUSED_GROWTH_MIB, f"a refused request peaked at {peak:.0f} MiB (a 28-px one: {base:.0f})"


def test_a_request_of_large_images_is_refused_or_streamed(served, tmp_path):
    """Ten 8000×8000 PNGs (~0.8 MB of request) decode to 1.9 GB: over max_request_pixels, refused
    from the headers. Within raised limits, images are decoded one at a time."""
    big = _png(np.zeros((8000, 8000, 3), np.uint8))
    small, base = _request(served(), [_png(np.zeros((28, 28), np.uint8))], tmp_path)
    answer, peak = _request(served(max_image_pixels=64_000_000), [big] * 10, tmp_path)
    assert answer["status"] == 400, answer
    assert "640,000,000 decoded pixels > serving.max_request_pixels 200,000,000" in answer["message"]
    assert peak - base < REFUSED_GROWTH_MIB, f"a refused request peaked at {peak:.0f} MiB (a 28-px one: {base:.0f})"
    raised = served(max_request_pixels=10**9)
    answer, peak = _request(raised, [_png(np.zeros((5000, 5000, 3), np.uint8))] * 10, tmp_path)
    assert answer == {"status": 200, "shape": [10, 64]}
    assert peak - base < STREAMED_GROWTH_MIB, f"ten 5000² images peaked at {peak:.0f} MiB (a 28-px one: {base:.0f})"


def test_array_inputs_are_bounded_too(served):
    import types

    from dinoflow.embedding.mlflow_model import EmbeddingModel

    model = EmbeddingModel()
    model.load_context(types.SimpleNamespace(artifacts={"backbone": str(served())}))
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="aspect ratio 2000 > serving.max_aspect_ratio"):
        model.predict(None, np.zeros((1, 1, 2000), np.uint8))
    assert model.predict(None, np.zeros((2, 30, 40), np.uint8)).shape == (2, 64)


def test_a_missing_backbone_is_named_before_anything_is_logged(tmp_path):
    import types

    from dinoflow.embedding.mlflow_model import EmbeddingModel, log_embedding_model
    from dinoflow.errors import DinoflowError

    with pytest.raises(DinoflowError) as e:
        log_embedding_model(tmp_path / "teacher", "teacher", None)
    assert str(e.value) == (
        f"cannot log model 'teacher': {tmp_path}/teacher/backbone.pth does not exist "
        "(run the stage that writes it first)"
    )
    (tmp_path / "logged").mkdir()
    with pytest.raises(DinoflowError, match=r"the logged model has no backbone: .*/logged/backbone\.pth is missing"):
        EmbeddingModel().load_context(types.SimpleNamespace(artifacts={"backbone": str(tmp_path / "logged")}))
