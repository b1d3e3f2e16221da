"""The student as ONNX: the same graph as `EmbeddingHead` (embedding + pooled patch tokens), a dynamic
batch, and a parity check against PyTorch with onnxruntime before anything is logged.

Graph: input `pixel_values` float32 [batch, 3, S, S] — images after the evaluation transform
(`dinoflow.evaluation.transform.eval_transform`: resize, centre crop S, ImageNet mean/std);
outputs `embedding` and `pooled_patch_tokens`, float32 [batch, D], L2-normalised.
S is fixed in the graph: the backbone's own grid when S equals its `img_size`, otherwise the
positional embedding is interpolated to S at export (the backbone's own bicubic rule), so a
model trained at one resolution can be served at another.

Exported with PyTorch's `torch.export`-based exporter (needs `onnx` and `onnxscript`); checked with
`onnxruntime` on batches of 1 and 3 random inputs: max |ONNX − PyTorch| must stay within `atol`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dinoflow.embedding.compute import EMBEDDING, POOLED_PATCH_TOKENS, EmbeddingHead
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.transform import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer

log = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = (EMBEDDING, POOLED_PATCH_TOKENS)
ONNX_FILE = "model.onnx"
INFO_FILE = "onnx.json"
PARITY_BATCHES = (1, 3)
PROTOBUF_LIMIT = 2**31 - 2**27  # one .onnx file holds < 2 GiB; larger weights go to model.onnx.data


def _require() -> tuple[Any, Any]:
    try:
        import onnx  # the exporter needs it
        import onnxruntime
        import onnxscript  # noqa: F401 - the exporter needs it
    except ImportError as e:
        raise DinoflowError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e}); `pip install -c constraints.txt "
            "onnx onnxscript onnxruntime`, or set register.onnx.enabled=false"
        ) from None
    return onnx, onnxruntime


def export_onnx(backbone: DinoVisionTransformer, out_dir: str | Path, image_size: int, opset: int = 18) -> Path:
    """Export `EmbeddingHead(backbone)` for [batch, 3, image_size, image_size] inputs to out_dir/model.onnx."""
    _require()
    patch = int(getattr(backbone, "patch_size", 1))
    if image_size % patch:
        raise DinoflowError(f"ONNX image size {image_size} is not a multiple of the backbone's patch size {patch}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = EmbeddingHead(backbone).eval()
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    weight_bytes = sum(t.numel() * t.element_size() for t in backbone.state_dict().values())
    chatter = io.StringIO()  # the exporter prints its progress; failures still raise
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                head,
                (example,),
                str(out / ONNX_FILE),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},),
                verbose=False,
                external_data=weight_bytes > PROTOBUF_LIMIT,
            )
    except Exception as e:  # exporter internals raise many types; name the step and the way out
        raise DinoflowError(
            f"ONNX export of the student failed ({type(e).__name__}: {str(e)[:300]}); "
            "set register.onnx.enabled=false to register without it"
        ) from e
    finally:
        quiet.setLevel(level)
    log.debug("%s", chatter.getvalue())
    return out / ONNX_FILE


def _require_finite(name: str, batch: int, **outputs: np.ndarray) -> None:
    """DinoflowError when an output holds NaN or ±inf: every comparison with NaN is false, so an
    error of NaN would otherwise read as 0 and pass any tolerance."""
    for side, a in outputs.items():
        bad = int(np.size(a) - np.isfinite(a).sum())
        if bad:
            raise DinoflowError(
                f"{'ONNX' if side == 'onnx' else 'PyTorch'} output {name} holds {bad} non-finite value(s) (NaN/inf) "
                f"on a batch of {batch}: the {'exported graph' if side == 'onnx' else 'model itself'} is broken; "
                "keep register.onnx.enabled=false until it is fixed"
            )


def check_parity(
    backbone: DinoVisionTransformer, onnx_path: str | Path, image_size: int, atol: float, seed: int = 0
) -> float:
    """Max |ONNX − PyTorch| over both outputs on random batches of 1 and 3; DinoflowError above atol
    or when either side outputs a non-finite value."""
    _, ort = _require()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    head = EmbeddingHead(backbone).eval()
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in PARITY_BATCHES:
        x = torch.randn(b, 3, image_size, image_size, generator=gen)
        with torch.no_grad():
            expected = [t.numpy() for t in head(x)]
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        for name, e, g in zip(OUTPUT_NAMES, expected, got):
            if g.shape != e.shape:
                raise DinoflowError(
                    f"ONNX output {name} has shape {g.shape} for a batch of {b}; PyTorch gives {e.shape}"
                )
            _require_finite(name, b, pytorch=e, onnx=g)
            worst = max(worst, float(np.abs(g - e).max()))
    if worst > atol:
        raise DinoflowError(
            f"ONNX export differs from PyTorch by {worst:.3g} (> register.onnx.atol {atol:g}) on {image_size}-px inputs: "
            "the exported graph is not the model; keep register.onnx.enabled=false until the exporter is fixed"
        )
    return worst


def export_checked(
    backbone: DinoVisionTransformer,
    out_dir: str | Path,
    image_size: int,
    resize_ratio: float,
    opset: int = 18,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export + parity check; writes out_dir/onnx.json (how to feed the graph) and returns its content."""
    path = export_onnx(backbone, out_dir, image_size, opset)
    err = check_parity(backbone, path, image_size, atol)
    native = int(getattr(getattr(backbone, "config", None), "img_size", 0) or 0)
    info = {
        "file": ONNX_FILE,
        "opset": opset,
        "input": INPUT_NAME,
        "input_shape": ["batch", 3, image_size, image_size],
        "outputs": list(OUTPUT_NAMES),
        "output_dim": int(getattr(backbone, "embed_dim", 0)),
        "resolution": "native" if native == image_size else f"interpolated from {native} px",
        "preprocess": {
            "image_size": image_size,
            "resize_ratio": resize_ratio,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "note": "shorter side → image_size·resize_ratio (bicubic), "
            "centre crop image_size, [0, 1], ImageNet mean/std; grey repeated to RGB",
        },
        "parity_max_abs_error": err,
        "parity_atol": atol,
    }
    (Path(out_dir) / INFO_FILE).write_text(json.dumps(info, indent=2))
    log.info("ONNX export %s: max |ONNX − PyTorch| %.2e", path, err)
    return info
