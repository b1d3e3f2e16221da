"""The status words of curation, one definition for the writers (ingest, the steps, the manifest)
and the readers (the report, the demo's scoring, training's manifest check).

Two vocabularies, on purpose: a partition's ingest table (the resumable per-partition work,
written before any global step) marks a decodable image `ok` (or `corrupt` / `junk`); the global
steps then turn every `ok` row into `kept` or a drop reason, and only `STATUSES` reach the manifest.
"""

from __future__ import annotations

# Manifest statuses (`kept` or why a row was dropped). The code of a status is its index here;
# nothing else depends on this order.
STATUSES = ("kept", "corrupt", "junk", "exact_dup", "near_dup", "eval_contamination", "not_retrieved", "not_sampled")
KEPT = "kept"
DUPLICATE_STATUSES = ("exact_dup", "near_dup")
# ingest tables: an image that decoded and passed the junk guards, before the global steps
PARTITION_OK = "ok"
