"""A backbone as an MLflow model that embeds images: images in, CLS embeddings out.

    model = mlflow.pyfunc.load_model("models:/dinoflow-student@champion")
    emb = model.predict(images)          # uint8 [N,H,W] or [N,H,W,C]  → float32 [N,D]
    emb = model.predict(pd.DataFrame({"image": [png_bytes, jpeg_bytes]}))

The embedding is the backbone's `x_norm_clstoken` after the evaluation transform
(`dinoflow.evaluation.transform.eval_transform`: shorter side → image_size·resize_ratio,
centre crop image_size, ImageNet mean/std; grey repeated to 3 channels) — the same features
the k-NN gate was measured on. Transform settings come from the `evaluate` config section and
travel with the model in `preprocess.json`.

Serialisation: a pyfunc `PythonModel` (logged "from code": a three-line loader script, no
cloudpickle) + the weights file, not MLflow 3's default PyTorch
export (`torch.export` → pt2). Reasons:
- the artifact *is* the official-layout `backbone.pth` + `config.yaml`, loaded with
  `torch.load(weights_only=True)`: no pickled code to trust, and the same file works outside
  MLflow (DINOv2 hub code, `dinoflow.models.load_backbone`);
- a pt2 program is traced for fixed input shapes: positional-embedding interpolation for other
  image sizes, variable batch sizes and bytes decoding would have to be made export-friendly
  (dynamic dims, no data-dependent Python branches) and the program is tied to the torch
  version that exported it;
- the model owns its pre-processing (decode, resize, normalise), which pt2 cannot hold.
The cost: loading needs torch + dinoflow's model code; the model carries that code
(`code_paths`) and pins torch in its requirements.

Input schema: pyfunc enforces one signature, and the three accepted forms (uint8 [N,H,W],
uint8 [N,H,W,C], a column of encoded bytes) differ in rank and type, so the signature declares
a ragged object tensor `(-1,)` (MLflow's "any batch" spec) and `predict` validates the input
itself with clear errors. The output is declared exactly: float32 `(-1, D)`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PREPROCESS_FILE = "preprocess.json"
ARTIFACT_KEY = "backbone"
PREDICT_BATCH = 256
LOADER_CODE = (
    "import mlflow.models\n"
    "from dinoflow.mlflow_model import EmbeddingModel\n"
    "mlflow.models.set_model(EmbeddingModel())\n"
)


def preprocess_settings(cfg: Any) -> dict[str, Any]:
    """The evaluation transform's settings from the `evaluate` section (or the defaults)."""
    ev = getattr(cfg, "evaluate", None)
    if ev is None:
        from dinoflow.config import EvaluateConfig

        ev = EvaluateConfig()
    return {"image_size": int(ev.image_size), "resize_ratio": float(ev.resize_ratio)}


def _decode(data: Any) -> np.ndarray:
    from dinoflow.data.decode import CorruptImage, decode_image

    if isinstance(data, str):
        import base64

        data = base64.b64decode(data)  # JSON serving sends binary columns base64-encoded
    try:
        return np.asarray(decode_image(bytes(data)))
    except CorruptImage as e:
        raise ValueError(f"cannot decode an input image: {e}") from e


def as_images(model_input: Any) -> "list[np.ndarray] | np.ndarray":
    """Normalise a pyfunc input to uint8 images: an array [N,H,W] / [N,H,W,C], or a list of [H,W(,C)].

    Accepts a uint8 array (also int arrays within 0–255, as JSON serving delivers them), a pandas
    DataFrame whose first (or `image`) column holds PNG/JPEG bytes, or a sequence of such bytes.
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas ships with mlflow
        pd = None
    if pd is not None and isinstance(model_input, pd.DataFrame):
        col = "image" if "image" in model_input.columns else model_input.columns[0]
        return [_decode(v) for v in model_input[col].tolist()]
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, (list, tuple)) and model_input and isinstance(model_input[0], (bytes, bytearray, str)):
        return [_decode(v) for v in model_input]
    a = np.asarray(model_input)
    if a.dtype == object:
        flat = a.reshape(-1) if a.ndim <= 2 else None
        if flat is not None and len(flat) and isinstance(flat[0], (bytes, bytearray, str)):
            return [_decode(v) for v in flat]
        a = np.asarray(a.tolist())
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 255:
            a = a.astype(np.uint8)
        else:
            raise ValueError(f"images must be uint8 (0–255) arrays [N,H,W] or [N,H,W,C], or encoded bytes; got {a.dtype}")
    if a.ndim == 4 and a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"a 4-d image batch must be [N,H,W,C] with C in 1/3/4; got {a.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"images must be a batch [N,H,W] or [N,H,W,C]; got shape {a.shape}")
    return a


def embed(model: Any, images: "list[np.ndarray] | np.ndarray", image_size: int, resize_ratio: float) -> np.ndarray:
    """uint8 images → float32 [N, D] CLS embeddings (`x_norm_clstoken`) after the eval transform."""
    import torch

    from dinoflow.evaluation.transform import eval_transform

    out = []
    n = len(images)
    for start in range(0, n, PREDICT_BATCH):
        chunk = images[start : start + PREDICT_BATCH]
        if isinstance(chunk, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(chunk))
            batch = t if t.ndim == 3 else t[..., :3].permute(0, 3, 1, 2)
        else:
            batch = list(chunk)
        x = eval_transform(batch, image_size=image_size, resize_ratio=resize_ratio)
        with torch.inference_mode():
            out.append(model.forward_features(x)["x_norm_clstoken"].float().numpy())
    dim = int(getattr(model, "embed_dim", 0))
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


try:
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _PythonModel = object


class EmbeddingModel(_PythonModel):
    """pyfunc: images → CLS embeddings. Artifacts: a directory with backbone.pth, config.yaml, preprocess.json."""

    def load_context(self, context: Any) -> None:
        from dinoflow.models import load_backbone

        d = Path(context.artifacts[ARTIFACT_KEY])
        self._model = load_backbone(d / "backbone.pth")
        self._prep = json.loads((d / PREPROCESS_FILE).read_text())

    # no type hints on predict: MLflow would try (and fail) to derive a signature from them
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        images = as_images(model_input)
        return embed(self._model, images, self._prep["image_size"], self._prep["resize_ratio"])


def _requirements() -> list[str]:
    import importlib.metadata as md

    reqs = []
    for dist in ("torch", "numpy", "pillow", "pyyaml", "pydantic", "pandas"):
        try:
            reqs.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_embedding_model(backbone_path: str | Path, name: str, cfg: Any, registered_model_name: str | None = None) -> Any:
    """Log `backbone_path` (a backbone.pth with config.yaml beside it, or their directory) into the
    active run as pyfunc model `name`; also log the raw files under `weights/<name>/`.

    Returns MLflow's ModelInfo (`model_uri`, `model_id`, `registered_model_version`).
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    import dinoflow
    from dinoflow.errors import DinoflowError
    from dinoflow.models import load_backbone

    pth = Path(backbone_path)
    if pth.is_dir():
        pth = pth / "backbone.pth"
    if not pth.is_file():
        raise DinoflowError(f"cannot log model {name!r}: {pth} does not exist (run the stage that writes it first)")
    prep = preprocess_settings(cfg)
    model = load_backbone(pth)
    size = prep["image_size"]
    example = np.random.default_rng(0).integers(0, 256, size=(2, size, size), dtype=np.uint8)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(model.embed_dim)))]),
    )
    with tempfile.TemporaryDirectory(prefix="dinoflow-model-") as tmp:
        bundle = Path(tmp) / "backbone"
        bundle.mkdir()
        shutil.copy2(pth, bundle / "backbone.pth")
        if (pth.parent / "config.yaml").is_file():
            shutil.copy2(pth.parent / "config.yaml", bundle / "config.yaml")
        (bundle / PREPROCESS_FILE).write_text(json.dumps(prep))
        # models-from-code: MLflow stores this tiny script instead of a cloudpickled object
        loader = Path(tmp) / "embedding_model.py"
        loader.write_text(LOADER_CODE)
        mlflow.log_artifacts(str(bundle), f"weights/{name}")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(loader),
            artifacts={ARTIFACT_KEY: str(bundle)},
            code_paths=[str(Path(dinoflow.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
            metadata={"embedding": "x_norm_clstoken", "embed_dim": int(model.embed_dim), **prep},
        )
    return info
