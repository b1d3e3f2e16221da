"""What the `evaluate` stage compares: the trained models and the baselines, as one list of candidates.

A candidate is a name, a way to turn images into features (a frozen backbone, or the image's own
pixels) and a kind: `trained` (a model file, hashed for the report's provenance) or `baseline`
(the same architecture at random init; raw pixels). Every evaluation runs over the list alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from dinoflow.config import EvaluateConfig, stage_seed
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.dense_features import backbone_grids, pixel_grids
from dinoflow.evaluation.features import FeatureSet, extract_features, pixel_features
from dinoflow.models.vit import DinoVisionTransformer, backbone_from_config

RANDOM_INIT = "random_init"
RAW_PIXELS = "raw_pixels"
BASELINES = (RANDOM_INIT, RAW_PIXELS)

Kind = Literal["trained", "baseline"]


@dataclass(frozen=True)
class Candidate:
    """One row of every table: `backbone` None means the raw-pixel features; `path`/`sha256` name
    the file a trained candidate was loaded from (None for baselines)."""

    name: str
    kind: Kind
    description: str
    backbone: DinoVisionTransformer | None = None
    path: Path | None = None
    sha256: str | None = None

    def features(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray,
        ev: EvaluateConfig,
        *,
        n_last_blocks: int,
        device: torch.device,
        desc: str,
    ) -> FeatureSet:
        """Frozen features of `images` (CLS [N, D], and the last blocks' tokens for the linear probe)."""
        if self.backbone is None:
            return pixel_features(
                images, labels, image_size=ev.image_size, resize_ratio=ev.resize_ratio, progress=ev.progress, desc=desc
            )
        return extract_features(
            self.backbone,
            images,
            labels,
            image_size=ev.image_size,
            resize_ratio=ev.resize_ratio,
            batch_size=ev.batch_size,
            n_last_blocks=n_last_blocks,
            device=device,
            progress=ev.progress,
            desc=desc,
        )

    def grids(
        self, images: Sequence[np.ndarray], *, size: int, patch: int, with_cls: bool, device: torch.device
    ) -> torch.Tensor:
        """Patch features on a token grid [N, C, h, w] for the dense probes; raw pixels use `patch`."""
        if self.backbone is None:
            return pixel_grids(images, size=size, patch=patch)
        return backbone_grids(self.backbone, images, size=size, with_cls=with_cls, device=device)


def describe(model: nn.Module, extra: str = "") -> str:
    """The architecture in words (arch/patch, registers, LayerScale init), then `extra`."""
    c = getattr(model, "config", None)
    if c is None:
        return extra
    ls = "none" if c.layerscale_init is None else f"{c.layerscale_init:g}"
    regs = f", {c.num_register_tokens} registers" if c.num_register_tokens else ""
    return f"{c.arch}/{c.patch_size}{regs} (LayerScale init {ls}){extra}"


def trained(name: str, model: DinoVisionTransformer, path: Path, sha256: str) -> Candidate:
    """A trained model loaded from `path` (whose bytes hash to `sha256`), put in eval mode."""
    return Candidate(name, "trained", describe(model, f", from {path}"), model.eval(), path, sha256)


def build_random_init(reference: nn.Module, ev: EvaluateConfig) -> DinoVisionTransformer:
    """The reference's architecture, freshly initialised (official init) with `random_init_layerscale`, seeded."""
    cfg = getattr(reference, "config", None)
    if cfg is None:
        raise DinoflowError("the random-init baseline needs a model built by dinoflow.models (it reads model.config)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(ev.seed))
        model = backbone_from_config(cfg, layerscale_init=ev.random_init_layerscale, drop_path_rate=0.0)
    return model.eval()


def random_init_reference(ev: EvaluateConfig, names: Sequence[str]) -> str | None:
    """The trained model whose architecture the random-init baseline copies (None: no model, or no
    such baseline); a DinoflowError when `evaluate.random_init_like` names none of `names`.

    Checked on names alone, so a wrong setting fails before any model is loaded."""
    if RANDOM_INIT not in ev.baselines:
        return None
    ref = ev.random_init_like or ("teacher" if "teacher" in names else next(iter(names), None))
    if ref is not None and ref not in names:
        raise DinoflowError(f"evaluate.random_init_like={ref!r} is not one of evaluate.models {list(names)}")
    return ref


def baselines(ev: EvaluateConfig, trained: Sequence[Candidate]) -> tuple[list[Candidate], list[str]]:
    """The configured baselines to evaluate next to the `trained` candidates, and notes on any skipped."""
    out, notes = [], []
    if RANDOM_INIT in ev.baselines:
        ref = random_init_reference(ev, [c.name for c in trained])
        reference = next((c.backbone for c in trained if c.name == ref), None)
        if reference is None:
            notes.append("random_init baseline skipped: no model to copy the architecture from")
        else:
            model = build_random_init(reference, ev)
            how = f", architecture of {ref!r} at random init (official trunc-normal 0.02 init, seed {ev.seed})"
            out.append(Candidate(RANDOM_INIT, "baseline", describe(model, how), model))
    if RAW_PIXELS in ev.baselines:
        how = f"resized/centre-cropped pixels in [0, 1] at {ev.image_size} px, flattened (no mean/std normalisation)"
        out.append(Candidate(RAW_PIXELS, "baseline", how))
    return out, notes
