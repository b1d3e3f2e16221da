"""What a stage read: DVC hashes (or URIs) as tags, and each input data set as an MLflow dataset
reference (path or URI + hash as digest), never a copy. Credentials in URIs never reach MLflow."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from dinoflow.config.secrets import redact_urls as redact
from dinoflow.tracking.provenance import hash_input, is_remote, tag_key


def _dataset(path: str, digest: str | None) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    where = redact(path) if is_remote(path) else str(Path(path).resolve())
    with warnings.catch_warnings():  # local paths match two equivalent registered source classes
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(where)
    name = Path(path.rstrip("/")).name or where
    # mlflow marks `profile` abstract, yet MetaDataset is its documented concrete class for metadata-only inputs
    return MetaDataset(source, name=name, digest=(digest or "")[:32] or None)  # type: ignore[abstract]


def input_records(inputs: list[Any], hash_inputs: bool) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """(tags, [(data path, digest)]) for the stage's inputs (`dinoflow.config.stages.StageInput`s)."""
    tags: dict[str, str] = {}
    datasets: list[tuple[str, str | None]] = []
    for inp in inputs:
        digest = None
        if is_remote(inp.path):
            tags[tag_key("dinoflow.input", inp.path)] = redact(inp.path)
        elif hash_inputs:
            h = hash_input(inp.path)
            digest = h.digest
            if h.digest:
                tags[tag_key("dvc.md5", inp.path)] = h.digest
            elif h.problem:
                tags[tag_key("dinoflow.input_unhashed", inp.path)] = h.problem
        if inp.kind == "data" and (is_remote(inp.path) or Path(inp.path).exists()):
            datasets.append((inp.path, digest))
    return tags, datasets


def log_inputs(stage: str, inputs: list[Any], hash_inputs: bool) -> None:
    import mlflow

    tags, datasets = input_records(inputs, hash_inputs)
    for path, digest in datasets:
        mlflow.log_input(_dataset(path, digest), context=stage)
    if tags:
        mlflow.set_tags(tags)
