"""What an embedding is, in one place: images → the backbone's L2-normalised CLS embedding.

The served pyfunc model, `dinoflow embed` and the ONNX export all produce these numbers:
1. the evaluation transform (`dinoflow.evaluation.transform.eval_transform`: shorter side →
   image_size·resize_ratio, centre crop image_size, ImageNet mean/std; grey repeated to RGB),
   the same pixels the k-NN gate was measured on;
2. the backbone's `x_norm_clstoken` (after its final LayerNorm), L2-normalised, so a dot product
   is the cosine similarity the k-NN evaluation uses;
3. optionally the mean of `x_norm_patchtokens`, L2-normalised (`pooled_patch_tokens`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dinoflow.embedding.limits import Limits, check_image
from dinoflow.evaluation.transform import eval_transform

if TYPE_CHECKING:
    from dinoflow.embedding.limits import Limits
    from dinoflow.models.vit import DinoVisionTransformer

EMBEDDING = "embedding"
POOLED_PATCH_TOKENS = "pooled_patch_tokens"
BATCH = 256


class EmbeddingHead(torch.nn.Module):
    """backbone → (embedding [B, D], pooled_patch_tokens [B, D]), both L2-normalised.

    Input: float images [B, 3, S, S] after the evaluation transform. This module is also what the
    ONNX export traces, so ONNX and PyTorch compute the same graph.
    """

    def __init__(self, backbone: DinoVisionTransformer) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_features(x)
        cls = F.normalize(out["x_norm_clstoken"].float(), dim=-1)
        pooled = F.normalize(out["x_norm_patchtokens"].float().mean(dim=1), dim=-1)
        return cls, pooled


def prepare_image(image: Any, image_size: int, resize_ratio: float, limits: "Limits | None" = None) -> torch.Tensor:
    """One decoded uint8 image ([H,W] / [H,W,C] array or PIL) → float [1, 3, S, S] after the evaluation
    transform. `limits` (default: `Limits()`) is checked on its size first: `OverLimit` before the resize."""
    h, w = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
    check_image(int(w), int(h), limits or Limits(), image_size, resize_ratio)
    return eval_transform([image], image_size=image_size, resize_ratio=resize_ratio)


def embed_prepared(
    backbone: DinoVisionTransformer,
    pixels: "torch.Tensor | Sequence[torch.Tensor]",
    pooled_patch_tokens: bool = False,
    batch_size: int = BATCH,
) -> dict[str, np.ndarray]:
    """Transformed images (float [N, 3, S, S], or a sequence of [1, 3, S, S]) → {"embedding": float32
    [N, D]} (+ "pooled_patch_tokens": float32 [N, D] when asked), `batch_size` images per forward."""
    head = EmbeddingHead(backbone).eval()
    dim = int(getattr(backbone, "embed_dim", 0))
    cls_out, patch_out = [], []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        x = chunk if isinstance(chunk, torch.Tensor) else torch.cat(list(chunk))
        with torch.inference_mode():
            cls, pooled = head(x)
        cls_out.append(cls.numpy())
        patch_out.append(pooled.numpy())
    out = {EMBEDDING: np.concatenate(cls_out) if cls_out else np.zeros((0, dim), np.float32)}
    if pooled_patch_tokens:
        out[POOLED_PATCH_TOKENS] = np.concatenate(patch_out) if patch_out else np.zeros((0, dim), np.float32)
    return out


def embed_images(
    backbone: DinoVisionTransformer,
    images: "np.ndarray | Sequence[Any]",
    image_size: int,
    resize_ratio: float,
    pooled_patch_tokens: bool = False,
    batch_size: int = BATCH,
    limits: "Limits | None" = None,
) -> dict[str, np.ndarray]:
    """uint8 images (an array [N,H,W] / [N,H,W,C], or a list of [H,W(,C)] arrays or PIL images) →
    {"embedding": float32 [N, D]} (+ "pooled_patch_tokens": float32 [N, D] when asked).

    Each image is checked against `limits` (default `Limits()`) before its resize (`OverLimit`), and
    a list is transformed one image at a time, so only [3, S, S] floats are held per image."""
    limits = limits or Limits()
    if isinstance(images, np.ndarray):
        if len(images):
            check_image(int(images.shape[2]), int(images.shape[1]), limits, image_size, resize_ratio)
        pixels: Any = []
        for start in range(0, len(images), batch_size):
            t = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            batch = t if t.ndim == 3 else t[..., :3].permute(0, 3, 1, 2)
            pixels.append(eval_transform(batch, image_size=image_size, resize_ratio=resize_ratio))
        pixels = torch.cat(pixels) if pixels else []
    else:
        pixels = [prepare_image(im, image_size, resize_ratio, limits) for im in images]
    return embed_prepared(backbone, pixels, pooled_patch_tokens, batch_size)
