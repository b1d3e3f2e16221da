"""The embedding pyfunc's input handling, requirements and example (no server; see tests/registry/ for those)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dinoflow.mlflow_model import REQUIREMENTS, as_images, example_images, requirements, signature


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
