"""`dinoflow embed`: a registered model (or a backbone file) + images → Parquet of (uid, embedding).

Images come from `dinoflow.data.sources.iter_source` (an image folder, tar shards, an s3:// prefix;
uids relative to the input, in a deterministic order) and are decoded with the curation's safe
decoder: a bad image, one beyond the `serving` limits (`dinoflow.embedding.limits`) or a shard
truncated as stored is reported (uid + reason in `<out stem>.skipped.json`) and skipped, never
fatal; a read that breaks (an S3 endpoint dying mid-object) stops the run, which resumes when
rerun. Each image is transformed right after decoding, so a batch holds [3, S, S] floats, not
decoded images. One writer per output (`dinoflow.embedding.output`). Embeddings are those of
`dinoflow.embedding.compute.embed_images`, the numbers the served model returns. Output rows are committed
in parts (`dinoflow.embedding.parts`), so a killed run resumes where it stopped when started again with the same arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from dinoflow.data.decode import CorruptImage, decode_image
from dinoflow.data.s3 import is_s3_url
from dinoflow.data.sources import RawItem, SourceStats, iter_entry, list_source
from dinoflow.digest import file_sha256
from dinoflow.embedding.compute import EMBEDDING, POOLED_PATCH_TOKENS, embed_prepared, prepare_image
from dinoflow.embedding.limits import Limits, OverLimit, check_image, header_size
from dinoflow.embedding.output import OutputLock, check_output
from dinoflow.embedding.parts import PartStore
from dinoflow.errors import DinoflowError
from dinoflow.models.artifact import BackboneArtifact
from dinoflow.tracking import redact

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer

MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


@dataclass
class LoadedModel:
    backbone: DinoVisionTransformer
    image_size: int
    resize_ratio: float
    sha256: str  # of the backbone file: what the rows were made with
    source: str  # the URI or path given


def is_model_uri(spec: str) -> bool:
    return spec.startswith(MODEL_URI_PREFIXES)


def load_model(spec: str, image_size: int, resize_ratio: float) -> LoadedModel:
    """A registry / run URI (`models:/dinoflow-student@champion`): the logged pyfunc model with its own
    pre-processing; otherwise a backbone file (or its folder) with the given pre-processing."""
    if is_model_uri(spec):
        import mlflow

        from dinoflow.embedding.mlflow_model import EmbeddingModel

        try:
            wrapped = mlflow.pyfunc.load_model(spec).unwrap_python_model()
        except Exception as e:  # noqa: BLE001 - MlflowException, connection errors: name the model
            raise DinoflowError(
                f"cannot load model {spec} from the MLflow registry at {mlflow.get_tracking_uri()}: "
                f"{type(e).__name__}: {str(e)[:300]} (set MLFLOW_TRACKING_URI or --tracking-uri)"
            ) from None
        if not isinstance(wrapped, EmbeddingModel):
            raise DinoflowError(f"{spec} is not a dinoflow embedding model (it is {type(wrapped).__name__})")
        prep = wrapped.prep
        return LoadedModel(
            wrapped.backbone,
            int(prep["image_size"]),
            float(prep["resize_ratio"]),
            file_sha256(wrapped.backbone_path),
            spec,
        )
    missing = f"model {spec}: no such backbone file; give a backbone.pth (or its folder) or a models:/ URI"
    artifact = BackboneArtifact.open(spec, missing)
    return LoadedModel(artifact.load(), image_size, resize_ratio, artifact.sha256(), str(artifact.path))


@dataclass
class _Pending:
    """Rows waiting for the next part: transformed images [1, 3, S, S] of the current batch, finished rows, skips."""

    images: list[torch.Tensor] = field(default_factory=list)
    image_uids: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def rows(self) -> int:
        return len(self.uids)


def _embed_batch(model: LoadedModel, pending: _Pending, pooled: bool) -> int:
    if not pending.images:
        return 0
    out = embed_prepared(model.backbone, pending.images, pooled_patch_tokens=pooled)
    for k, v in out.items():
        pending.columns.setdefault(k, []).append(v)
    pending.uids += pending.image_uids
    n = len(pending.images)
    pending.images, pending.image_uids = [], []
    return n


def _prepare(model: LoadedModel, data: bytes, limits: Limits) -> torch.Tensor:
    """Encoded bytes → float [1, 3, S, S]; CorruptImage / OverLimit (checked from the header first)."""
    wh = header_size(data)
    if wh is not None:
        check_image(wh[0], wh[1], limits, model.image_size, model.resize_ratio)
    image = np.array(decode_image(data, max_pixels=limits.max_image_pixels))
    return prepare_image(image, model.image_size, model.resize_ratio, limits)


def _items(source: str, stats: Any, done: set[str]) -> Iterator[Any]:
    """Every raw item of `source`; a shard truncated as stored also yields an item with an error
    (uid: the shard), since the samples after the cut are lost. A read that breaks (an S3 endpoint
    dying) raises instead: the input is not at fault and a rerun resumes."""
    for entry in list_source(source, stats):
        before = stats.shards.truncated
        yield from iter_entry(entry, str(source), stats)
        if stats.shards.truncated > before and entry.rel not in done:
            reason = "truncated: the shard ends inside a member as stored; the samples from there on are lost"
            yield RawItem(entry.rel, str(source), b"", error=reason, entry=entry.rel)


def _write_part(store: PartStore, pending: _Pending, dim: int, pooled: bool) -> None:
    names = [EMBEDDING, POOLED_PATCH_TOKENS] if pooled else [EMBEDDING]
    cols = {
        k: np.concatenate(pending.columns[k]) if pending.columns.get(k) else np.zeros((0, dim), np.float32)
        for k in names
    }
    store.write_part(pending.uids, cols, pending.skipped)
    pending.uids, pending.columns, pending.skipped = [], {}, []


def run_embed(
    model: LoadedModel,
    source: str,
    output: str | Path,
    *,
    batch_size: int = 64,
    part_size: int = 4096,
    pooled: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Embed every image of `source` into `output` (Parquet); resumes a killed run. Returns a summary.

    One writer per output (`OutputLock`); an existing finished output is replaced only with
    `overwrite`. Images beyond `limits` (default `Limits()`) are skipped with the reason."""
    if not is_s3_url(str(source)) and not Path(source).exists():
        raise DinoflowError(f"input {source} does not exist: give an image folder, .tar shard(s) or s3://bucket/prefix")
    with OutputLock(output):
        check_output(output, overwrite, restart)
        return _run_locked(model, source, Path(output), batch_size, part_size, pooled, restart, progress, limits)


def _run_locked(
    model: LoadedModel,
    source: str,
    out: Path,
    batch_size: int,
    part_size: int,
    pooled: bool,
    restart: bool,
    progress: bool,
    limits: Limits | None,
) -> dict[str, Any]:
    limits = limits or Limits()
    settings = {
        "model_sha256": model.sha256,
        "image_size": model.image_size,
        "resize_ratio": model.resize_ratio,
        "input": redact(str(source)),
        "pooled_patch_tokens": pooled,
        "format": 1,
    }
    store = PartStore(out, settings, restart=restart)
    done, resumed_rows, resumed_skips = store.done()
    dim = int(getattr(model.backbone, "embed_dim", 0))
    stats = SourceStats()
    pending = _Pending()
    from tqdm import tqdm

    bar = tqdm(desc="embed", unit="img", dynamic_ncols=True, disable=not progress, initial=len(done))
    t0, embedded = time.perf_counter(), 0
    try:
        for item in _items(source, stats, done):
            if item.uid in done:
                continue
            bar.update(1)
            if item.error:
                pending.skipped.append({"uid": item.uid, "reason": item.error})
            else:
                try:
                    pending.images.append(_prepare(model, item.data, limits))
                    pending.image_uids.append(item.uid)
                except (CorruptImage, OverLimit) as e:
                    pending.skipped.append({"uid": item.uid, "reason": str(e)})
            if len(pending.images) >= batch_size:
                embedded += _embed_batch(model, pending, pooled)
                bar.set_postfix(skipped=len(resumed_skips) + len(pending.skipped), refresh=False)
            if pending.rows() >= part_size:
                _write_part(store, pending, dim, pooled)
        embedded += _embed_batch(model, pending, pooled)
        _write_part(store, pending, dim, pooled)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if stats.items == 0:
        store.discard()
        raise DinoflowError(
            f"{source} holds no images ({', '.join(s['path'] for s in stats.skipped_files[:5]) or 'empty'}): nothing to embed"
        )
    summary = store.finish({"model": model.source, "dim": dim})
    return {
        "output": str(out),
        **summary,
        "dim": dim,
        "model": model.source,
        "input": settings["input"],
        "resumed_rows": resumed_rows,
        "embedded_now": embedded,
        "seconds": round(seconds, 2),
        "images_per_s": round(embedded / seconds, 1) if seconds > 0 else None,
        "other_files": len(stats.skipped_files),
    }
