"""ONNX export of the student: dynamic batch, native or interpolated resolution, parity with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dinoflow.embedding.compute import EmbeddingHead
from dinoflow.embedding.onnx_export import check_parity, export_checked, export_onnx
from dinoflow.errors import DinoflowError
from dinoflow.models import build_backbone

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (10–20 s here)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()


def _run(path, x: torch.Tensor) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})


@pytest.mark.parametrize("size", [28, 42], ids=["native", "interpolated"])
def test_export_matches_pytorch_for_any_batch(backbone, tmp_path, size):
    info = export_checked(backbone, tmp_path, size, 1.0, atol=1e-4)
    assert info["parity_max_abs_error"] <= 1e-4 and info["input_shape"] == ["batch", 3, size, size]
    assert info["resolution"] == ("native" if size == 28 else "interpolated from 28 px")
    assert json.loads((tmp_path / "onnx.json").read_text()) == info
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["model.onnx", "onnx.json"], "one self-contained file"
    head = EmbeddingHead(backbone).eval()
    for batch in (1, 7):  # dynamic batch: sizes the export never saw
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = [t.numpy() for t in head(x)]
        got = _run(tmp_path / "model.onnx", x)
        assert [g.shape for g in got] == [(batch, backbone.embed_dim)] * 2
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(got[0], axis=1), 1.0, atol=1e-5)


def test_parity_check_fails_loudly_and_bad_sizes_are_refused(backbone, tmp_path):
    path = export_onnx(backbone, tmp_path, 28)
    assert check_parity(backbone, path, 28, atol=1e-4) <= 1e-4
    with pytest.raises(DinoflowError, match="ONNX export differs from PyTorch"):
        check_parity(backbone, path, 28, atol=1e-12)
    torch.manual_seed(5)
    other = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    with pytest.raises(DinoflowError, match="differs from PyTorch"):  # the graph of another model
        check_parity(other, path, 28, atol=1e-4)
    with pytest.raises(DinoflowError, match="not a multiple of the backbone's patch size 7"):
        export_onnx(backbone, tmp_path / "bad", 30)


def _poison(src, dst, pattern: str) -> str:
    """Copy an exported graph with the first float initializer whose name holds `pattern` set to NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if pattern in init.name and a.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(np.full_like(a, np.nan), init.name))
            onnx.save(model, str(dst))
            return init.name
    raise AssertionError(f"no float initializer named like {pattern!r}")


def test_a_graph_that_outputs_nan_fails_the_parity_check(backbone, tmp_path):
    path = export_onnx(backbone, tmp_path, 28)
    poisoned = tmp_path / "nan.onnx"
    name = _poison(path, poisoned, "norm")
    got = _run(poisoned, torch.randn(1, 3, 28, 28))
    assert np.isnan(got[0]).all(), f"NaN in {name} did not reach the output"
    with pytest.raises(DinoflowError, match=r"ONNX output embedding holds \d+ non-finite value"):
        check_parity(backbone, poisoned, 28, atol=1e-4)
    broken = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    with torch.no_grad():
        broken.norm.weight.fill_(float("nan"))
    with pytest.raises(DinoflowError, match="PyTorch output embedding holds .* the model itself is broken"):
        check_parity(broken, poisoned, 28, atol=1e-4)
