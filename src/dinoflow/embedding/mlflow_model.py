"""A backbone as an MLflow model that embeds images: encoded images or pixel arrays in, embeddings out.

    model = mlflow.pyfunc.load_model("models:/dinoflow-student@champion")
    emb = model.predict(np.array([png_bytes, jpeg_bytes], dtype=object))   # → float32 [N, D]
    emb = model.predict(pd.DataFrame({"image": [png_bytes, b64_text]}))     # bytes or base64 text
    emb = model.predict(uint8_images)                                       # [N,H,W] or [N,H,W,C]
    both = model.predict(images, params={"pooled_patch_tokens": True})     # {"embedding", "pooled_patch_tokens"}

    mlflow models serve -m models:/dinoflow-student@champion --env-manager local -p 5001
    curl -H 'Content-Type: application/json' -d @serving_input_example.json localhost:5001/invocations
    # {"inputs": ["<base64 PNG>", ...]}  →  {"predictions": [[...D floats...], ...]}

The embedding is defined in `dinoflow.embedding.compute` (L2-normalised `x_norm_clstoken` after
the evaluation transform, the features the k-NN gate measured); `dinoflow embed` computes the
same numbers. Transform settings travel with the model in `preprocess.json`.

Serialisation: a pyfunc `PythonModel` logged "from code" (a three-line loader script, no
cloudpickle) + the weights file, not MLflow's PyTorch export (`torch.export` → pt2). Reasons:
- the artifact *is* the official-layout `backbone.pth` + `config.yaml`, loaded with
  `torch.load(weights_only=True)`: no pickled code to trust, and the same file works outside
  MLflow (DINOv2 hub code, `dinoflow.models.load_backbone`);
- the model owns its pre-processing (decode, resize, normalise), which a pt2 program cannot hold;
- the ONNX export (`dinoflow.embedding.onnx_export`) travels beside it as artifact `onnx` for
  runtimes without Python.
The cost: loading needs torch + dinoflow's model code; the model carries that code
(`code_paths`) and lists what it imports in its requirements (public-index versions, no local
`+cpu` tags), so `pip install -r requirements.txt` works on a fresh machine.

Input schema: the accepted forms (a 1-d batch of bytes / base64 text, uint8 [N,H,W], [N,H,W,C])
differ in rank and type, so the signature declares an object tensor `(-1,)` — which MLflow
enforces as "any ndarray" — and `predict` validates the input itself with clear errors.

Cost of a request: bounded by the `serving` settings the model was registered with (in
`preprocess.json`; `dinoflow.embedding.limits`), checked from the image headers before decoding;
images are then decoded one at a time. Bad or too costly input answers HTTP 400 naming the bound.
"""

from __future__ import annotations

import base64
import importlib.metadata as md
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

import dinoflow
from dinoflow.config import EvaluateConfig
from dinoflow.data.decode import CorruptImage, decode_image
from dinoflow.embedding.compute import EMBEDDING, POOLED_PATCH_TOKENS, embed_images, embed_prepared, prepare_image
from dinoflow.embedding.limits import Limits, check_request, header_size
from dinoflow.models.artifact import BackboneArtifact
from dinoflow.models.weights import BACKBONE_FILE, CONFIG_FILE

PREPROCESS_FILE = "preprocess.json"
ARTIFACT_KEY = "backbone"
ONNX_ARTIFACT_KEY = "onnx"
PARAM_POOLED = POOLED_PATCH_TOKENS
LOADER_CODE = (
    "import mlflow.models\n"
    "from dinoflow.embedding.mlflow_model import EmbeddingModel\n"
    "mlflow.models.set_model(EmbeddingModel())\n"
)
# distribution → why the model needs it (what `dinoflow.embedding.mlflow_model` imports when loading and predicting)
REQUIREMENTS = {
    "torch": "the backbone",
    "numpy": "arrays in and out",
    "pillow": "PNG/JPEG decoding (dinoflow.data.decode)",
    "pyyaml": "config.yaml beside the weights",
    "pydantic": "the model config (dinoflow.config)",
    "pandas": "DataFrame inputs",
}


def preprocess_settings(cfg: Any) -> dict[str, Any]:
    """The evaluation transform's settings from the `evaluate` section (or the defaults), and the
    bounds on one image and one request from the `serving` section (`dinoflow.embedding.limits`)."""
    ev = getattr(cfg, "evaluate", None)
    if ev is None:
        ev = EvaluateConfig()
    limits = Limits.from_settings(getattr(cfg, "serving", None))
    return {"image_size": int(ev.image_size), "resize_ratio": float(ev.resize_ratio), **limits.as_dict()}


def _encoded(data: Any) -> bytes:
    """One encoded input as bytes (JSON serving sends images as base64 text)."""
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as e:
            raise ValueError(f"a text input must be a base64-encoded PNG/JPEG: {e}") from e
    return bytes(data)


def _decode(data: Any, max_pixels: int = 64_000_000) -> np.ndarray:
    try:
        return np.array(decode_image(_encoded(data), max_pixels=max_pixels))
    except CorruptImage as e:
        raise ValueError(f"cannot decode an input image: {e}") from e


def as_inputs(model_input: Any) -> "list[bytes] | np.ndarray":
    """Normalise a pyfunc input without decoding it: encoded images as a list of bytes, or pixels as a
    uint8 array [N,H,W] / [N,H,W,C].

    Accepts a uint8 array (also integer arrays within 0–255, as JSON serving delivers them), a
    pandas DataFrame whose `image` (or first) column holds PNG/JPEG bytes or base64 text, or a 1-d
    batch (array, list) of such bytes / text.
    """
    import pandas as pd  # a dependency (and mlflow's); deferred like mlflow itself

    if isinstance(model_input, pd.DataFrame):
        col = "image" if "image" in model_input.columns else model_input.columns[0]
        return [_encoded(v) for v in model_input[col].tolist()]
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, (list, tuple)) and model_input and isinstance(model_input[0], (bytes, bytearray, str)):
        return [_encoded(v) for v in model_input]
    a = np.asarray(model_input)
    if a.dtype == object or a.dtype.kind in ("S", "U"):
        flat = a.reshape(-1) if a.ndim <= 2 else None
        if flat is not None and len(flat) and isinstance(flat[0], (bytes, bytearray, str, np.bytes_, np.str_)):
            return [_encoded(v) for v in flat]
        a = np.asarray(a.tolist())
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 255:
            a = a.astype(np.uint8)
        else:
            raise ValueError(
                f"images must be uint8 (0–255) arrays [N,H,W] or [N,H,W,C], or encoded bytes; got {a.dtype}"
            )
    if a.ndim == 4 and a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"a 4-d image batch must be [N,H,W,C] with C in 1/3/4; got {a.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"images must be a batch [N,H,W] or [N,H,W,C]; got shape {a.shape}")
    return a


def as_images(model_input: Any) -> "list[np.ndarray] | np.ndarray":
    """`as_inputs` with every encoded image decoded: uint8 [N,H,W] / [N,H,W,C], or a list of [H,W,3]."""
    inputs = as_inputs(model_input)
    return inputs if isinstance(inputs, np.ndarray) else [_decode(b) for b in inputs]


def embed_request(
    backbone: Any, model_input: Any, prep: dict[str, Any], pooled_patch_tokens: bool = False
) -> dict[str, np.ndarray]:
    """One request → {"embedding": float32 [N, D]} (+ pooled patch tokens), within `prep`'s limits.

    Every image's size is checked from its header (or the array's shape) before any is decoded;
    then images are decoded and transformed one at a time, so a request holds one decoded image and
    N × [3, S, S] floats at once. Raises `OverLimit` (a ValueError) beyond a bound.
    """
    size, ratio = int(prep["image_size"]), float(prep["resize_ratio"])
    limits = Limits.from_settings(prep)
    inputs = as_inputs(model_input)
    if isinstance(inputs, np.ndarray):
        n, h, w = inputs.shape[:3]
        check_request([(w, h)] * n, limits, size, ratio)
        return embed_images(backbone, inputs, size, ratio, pooled_patch_tokens, limits=limits)
    check_request([header_size(b) for b in inputs], limits, size, ratio)
    pixels = []
    for i in range(len(inputs)):
        pixels.append(prepare_image(_decode(inputs[i], limits.max_image_pixels), size, ratio, limits))
        inputs[i] = b""  # the encoded bytes are no longer needed
    return embed_prepared(backbone, pixels, pooled_patch_tokens)


class EmbeddingModel(PythonModel):
    """pyfunc: images → embeddings. Artifacts: `backbone` (backbone.pth, config.yaml, preprocess.json)."""

    def load_context(self, context: Any) -> None:
        d = Path(context.artifacts[ARTIFACT_KEY])
        artifact = BackboneArtifact.open(d, "the logged model has no backbone: {path} is missing; log it again")
        self.backbone_path = artifact.path
        self.backbone = artifact.load()
        self.prep = json.loads((d / PREPROCESS_FILE).read_text())

    def embed(self, images: Any, pooled_patch_tokens: bool = False) -> dict[str, np.ndarray]:
        """Decoded uint8 images → {"embedding": [N, D]} (+ pooled patch tokens); see `embed_images`."""
        return embed_images(
            self.backbone,
            images,
            self.prep["image_size"],
            self.prep["resize_ratio"],
            pooled_patch_tokens=pooled_patch_tokens,
            limits=Limits.from_settings(self.prep),
        )

    # no type hints on predict: MLflow would try (and fail) to derive a signature from them
    def predict(self, context, model_input, params=None):
        pooled = bool((params or {}).get(PARAM_POOLED, False))
        try:
            out = embed_request(self.backbone, model_input, self.prep, pooled_patch_tokens=pooled)
        except ValueError as e:  # bad or too costly input: the client's to fix (HTTP 400 when served)
            raise MlflowException.invalid_parameter_value(str(e)) from e
        return out if pooled else out[EMBEDDING]


def requirements() -> list[str]:
    """`dist==version` for each of REQUIREMENTS, without local version tags (`2.13.0+cpu` → `2.13.0`).

    A local tag names a build that only one index has; the public version installs anywhere
    (install torch first where a CPU-only build is wanted: PyPI's Linux torch is a CUDA build).
    """
    reqs = []
    for dist in REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={md.version(dist).split('+')[0]}")
        except md.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def example_images(size: int) -> list[bytes]:
    """Two PNG images (a bright disc on black, a dark diagonal bar on white) at size × size."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype(np.uint8) * 255
    bar = np.where(np.abs(yy - xx) < max(1, size // 8), 0, 255).astype(np.uint8)
    out = []
    for a in (disc, bar):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def signature(dim: int) -> Any:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema([ParamSpec(PARAM_POOLED, "boolean", False)]),
    )


def log_embedding_model(
    backbone: BackboneArtifact | str | Path,
    name: str,
    cfg: Any,
    registered_model_name: str | None = None,
    *,
    model_id: str | None = None,
    onnx_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    prep: dict[str, Any] | None = None,
) -> Any:
    """Log `backbone` (an opened artifact, or a backbone.pth with config.yaml beside it, or their
    directory) into the active run as pyfunc model `name`; also log the raw files under the run's
    `weights/<name>/`.

    `model_id`: log into this already-created MLflow LoggedModel (e.g. one whose source run is the
    training run); `onnx_dir`: a folder (model.onnx + onnx.json) logged as the model's `onnx` artifact;
    `prep`: `preprocess_settings(cfg)` when the caller has them already.
    Returns MLflow's ModelInfo (`model_uri`, `model_id`, `registered_model_version`).
    """
    artifact = (
        backbone
        if isinstance(backbone, BackboneArtifact)
        else BackboneArtifact.open(
            backbone, f"cannot log model {name!r}: {{path}} does not exist (run the stage that writes it first)"
        )
    )
    pth = artifact.path
    prep = preprocess_settings(cfg) if prep is None else prep
    dim = int(artifact.load().embed_dim)
    example = np.array([base64.b64encode(b).decode() for b in example_images(prep["image_size"])], dtype=object)
    artifacts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dinoflow-model-") as tmp:
        bundle = Path(tmp) / "backbone"
        bundle.mkdir()
        shutil.copy2(pth, bundle / BACKBONE_FILE)
        if artifact.config_path.is_file():
            shutil.copy2(artifact.config_path, bundle / CONFIG_FILE)
        (bundle / PREPROCESS_FILE).write_text(json.dumps(prep))
        artifacts[ARTIFACT_KEY] = str(bundle)
        if onnx_dir is not None:
            artifacts[ONNX_ARTIFACT_KEY] = str(onnx_dir)
        # models-from-code: MLflow stores this tiny script instead of a cloudpickled object
        loader = Path(tmp) / "embedding_model.py"
        loader.write_text(LOADER_CODE)
        mlflow.log_artifacts(str(bundle), f"weights/{name}")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(loader),
            artifacts=artifacts,
            code_paths=[str(Path(dinoflow.__file__).parent)],
            signature=signature(dim),
            input_example=example,
            pip_requirements=requirements(),
            registered_model_name=registered_model_name,
            model_id=model_id,
            metadata={
                "embedding": "L2-normalised x_norm_clstoken",
                "embed_dim": dim,
                "params": {PARAM_POOLED: "also return the L2-normalised mean patch token"},
                **prep,
                **(metadata or {}),
            },
        )
