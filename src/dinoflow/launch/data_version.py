"""The version of the data a curation run reads: a digest of the listing of every curate input
(pool sources, seeds, eval sets), for Kubeflow's cache key.

KFP's cache key holds a step's component and resolved inputs, nothing of what an `s3://` prefix
or a mounted folder holds: a pool that changed behind the same URI would be served the old
curation from cache. The DAG's first step (never cached) computes this digest and hands it to the
curation steps as an input, so a changed pool changes their cache keys. What enters it: for an
S3 object its key, size and ETag (the ETag changes with the content, also for a same-size
rewrite); for a local file its relative path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from dinoflow.config import Config
from dinoflow.config.stages import stage_inputs
from dinoflow.data import s3
from dinoflow.data.sources import list_source

VERSION_FORMAT = 1


def _listing(source: str) -> Iterator[list]:
    """One row per object or file of `source`: what identifies its content without reading it."""
    if s3.is_s3_url(source):
        # the bare prefix, no trailing "/" added: a sibling "a/bc" counted with "a/b" can only make
        # the version change more often, never serve a changed pool from cache
        for obj in s3.iter_objects(source):
            yield [obj.key, obj.size, obj.etag]
    elif not Path(source).exists():
        # not this step's error to report: curate_plan refuses it, naming the config key
        yield ["<missing>"]
    else:
        for e in list_source(source):
            yield [e.rel, e.size, e.mtime_ns]


def data_version(cfg: Config) -> str:
    """`sha256:<hex>` over the listings of every curate input; equal only for equal listings."""
    h = hashlib.sha256(f"dinoflow-data-version-v{VERSION_FORMAT}".encode())
    for inp in stage_inputs("curate", cfg):
        location = inp.path
        h.update(json.dumps(["input", location]).encode())
        for row in _listing(location):
            h.update(json.dumps(row, ensure_ascii=True).encode())
    return f"sha256:{h.hexdigest()}"
