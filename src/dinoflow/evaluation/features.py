"""Frozen features for evaluation: one batched forward pass per image gives everything the probes need.

`get_intermediate_layers(x, n, return_class_token=True, norm=True)` yields, for each of the last
n blocks, the (final-LayerNorm'd) patch tokens and CLS token — exactly the inputs of the official
linear probe. The last block's CLS equals `x_norm_clstoken`, the k-NN / logistic-regression feature.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence, TypeVar, overload

import numpy as np
import torch
from tqdm import tqdm

from dinoflow.errors import DinoflowError
from dinoflow.evaluation.transform import eval_transform

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer

T = TypeVar("T")


@dataclass
class FeatureSet:
    """Features of N images.

    cls:        [N, D]     CLS token of the last block after the final norm (k-NN, logreg)
    blocks_cls: [N, L, D]  CLS tokens of the last L blocks (oldest first; linear probe)
    patch_mean: [N, D]     average-pooled patch tokens of the last block, or None (raw pixels)
    labels:     [N]        int64
    """

    cls: torch.Tensor
    blocks_cls: torch.Tensor
    patch_mean: torch.Tensor | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "FeatureSet":
        pm = self.patch_mean[idx] if self.patch_mean is not None else None
        return FeatureSet(self.cls[idx], self.blocks_cls[idx], pm, self.labels[idx])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DinoflowError("evaluate.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 only on CUDA: this kind of CPU is >10x slower in bf16 than in fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@overload
def iter_batches(
    images: np.ndarray, batch_size: int, desc: str = "", progress: bool = True
) -> Iterator[np.ndarray]: ...
@overload
def iter_batches(
    images: Sequence[T], batch_size: int, desc: str = "", progress: bool = True
) -> Iterator[Sequence[T]]: ...
def iter_batches(
    images: "np.ndarray | Sequence[object]", batch_size: int, desc: str = "", progress: bool = True
) -> Iterator["np.ndarray | Sequence[object]"]:
    """Slices of `images` with a tqdm bar counting images (its rate is images/s)."""
    n = len(images)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            yield chunk
            bar.update(len(chunk))


def _as_batch(chunk: "np.ndarray | Sequence[object]") -> "torch.Tensor | Sequence[object]":
    if isinstance(chunk, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(chunk if chunk.ndim == 3 else chunk.transpose(0, 3, 1, 2)))
    return chunk


@torch.inference_mode()
def extract_features(
    model: DinoVisionTransformer,
    images: "np.ndarray | Sequence[object]",
    labels: "np.ndarray | torch.Tensor",
    *,
    image_size: int,
    resize_ratio: float = 256 / 224,
    batch_size: int = 256,
    n_last_blocks: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Run `model` (frozen, eval mode) over `images` with the evaluation transform.

    images: uint8 [N,H,W] / [N,H,W,C] or a list of images of any sizes; labels [N].
    n_last_blocks is clipped to the model's depth.
    """
    dev = torch.device(device) if isinstance(device, str) else device
    was_training = model.training
    model.eval().to(dev)
    n = max(1, min(int(n_last_blocks), int(getattr(model, "n_blocks", n_last_blocks))))
    cls_l, blocks_l, pm_l = [], [], []
    try:
        for chunk in iter_batches(images, batch_size, desc, progress):
            x = eval_transform(_as_batch(chunk), image_size, resize_ratio).to(dev)
            with _autocast(dev):
                outs = model.get_intermediate_layers(x, n, return_class_token=True, norm=True)
            blocks = torch.stack([c.float() for _, c in outs], dim=1)  # [B, n, D]
            blocks_l.append(blocks.cpu())
            cls_l.append(blocks[:, -1].cpu())
            pm_l.append(outs[-1][0].float().mean(dim=1).cpu())
    finally:
        model.train(was_training)
    return FeatureSet(
        cls=torch.cat(cls_l),
        blocks_cls=torch.cat(blocks_l),
        patch_mean=torch.cat(pm_l),
        labels=torch.as_tensor(np.asarray(labels), dtype=torch.long),
    )


def _is_grey(images: "np.ndarray | Sequence[object]") -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim == 3
    return all(isinstance(im, np.ndarray) and im.ndim == 2 for im in images)


def pixel_features(
    images: "np.ndarray | Sequence[object]",
    labels: "np.ndarray | torch.Tensor",
    *,
    image_size: int,
    resize_ratio: float = 256 / 224,
    batch_size: int = 1024,
    progress: bool = True,
    desc: str = "pixels",
) -> FeatureSet:
    """The raw-pixel baseline: resized + centre-cropped pixels in [0, 1], flattened (grey stays 1 channel).

    No mean/std normalisation, so the k-NN cosine is the cosine of the images themselves.
    """
    channels = 1 if _is_grey(images) else 3
    rows = []
    for chunk in iter_batches(images, batch_size, desc, progress):
        x = eval_transform(_as_batch(chunk), image_size, resize_ratio, normalize=False, channels=channels)
        rows.append(x.flatten(1))
    flat = torch.cat(rows)
    return FeatureSet(
        cls=flat,
        blocks_cls=flat[:, None],
        patch_mean=None,
        labels=torch.as_tensor(np.asarray(labels), dtype=torch.long),
    )


@torch.inference_mode()
def patch_tokens(
    model: DinoVisionTransformer,
    images: "np.ndarray | Sequence[object]",
    *,
    image_size: int,
    resize_ratio: float = 256 / 224,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Last-block patch tokens (normed) as a grid [B, H/p, W/p, D] for a few images (the PCA figure)."""
    dev = torch.device(device) if isinstance(device, str) else device
    was_training = model.training
    model.eval().to(dev)
    try:
        x = eval_transform(_as_batch(images), image_size, resize_ratio).to(dev)
        (grid,) = model.get_intermediate_layers(x, 1, reshape=True, norm=True)  # [B, D, h, w]
    finally:
        model.train(was_training)
    return grid.float().permute(0, 2, 3, 1).cpu()
