"""Score a curation run on the demo pool against the truth the demo planted (`ground_truth.json`).

The library's curation report knows nothing about planted truth; the demo (its summary, its
tests) reads the curated manifest and scores it here:

- duplicate_recall / duplicate_precision: over items dropped as `exact_dup` or `near_dup`. A drop
  is correct when the item and the item it duplicates belong to the same planted group (an
  original and its copies); recall divides by the number of planted copies, precision by the
  number of drops.
- junk_kept_fraction: planted junk that ended up `kept`.
- corrupt_reported / corrupt_total: planted corrupt files reported as `corrupt`.
- eval_copies_removed / eval_copies_total: planted eval copies dropped as `eval_contamination`.
- manifest_uids / truth_uids: distinct uids in the manifest vs. pool items the demo planted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dinoflow.data.statuses import DUPLICATE_STATUSES as DUP_STATUSES


def find_ground_truth(sources: list[str]) -> Path | None:
    """`ground_truth.json` in the (single local) source folder or its parent, else None."""
    if len(sources) != 1 or sources[0].startswith("s3://"):
        return None
    src = Path(sources[0])
    for cand in (src / "ground_truth.json", src.parent / "ground_truth.json"):
        if cand.is_file():
            return cand
    return None


def score_manifest(manifest: dict[str, list], truth: dict[str, Any]) -> dict[str, Any]:
    """Score manifest columns (`path`, `uid`, `status`, `duplicate_of`; path = pool-relative) against the truth."""
    pool = truth.get("pool", {})
    kind = {u: r.get("kind") for u, r in pool.items()}
    group = {u: (r.get("of") if r.get("kind") in DUP_STATUSES else u) for u, r in pool.items()}
    status = dict(zip(manifest["path"], manifest["status"]))
    path_of = dict(zip(manifest["uid"], manifest["path"]))
    drops = [
        (p, path_of.get(d, ""))
        for p, s, d in zip(manifest["path"], manifest["status"], manifest["duplicate_of"])
        if s in DUP_STATUSES
    ]
    correct = [p in group and group[p] == group.get(other) for p, other in drops]
    n_true = sum(k in DUP_STATUSES for k in kind.values())
    per_kind: dict[str, dict[str, int]] = {}
    for u, k in kind.items():
        st = status.get(u, "missing")
        per_kind.setdefault(k, {}).setdefault(st, 0)
        per_kind[k][st] += 1

    def of_kind(k: str, st: str) -> int:
        return sum(status.get(u) == st for u, kk in kind.items() if kk == k)

    total = {k: sum(kk == k for kk in kind.values()) for k in ("junk", "corrupt", "eval_copy")}
    return {
        "duplicate_recall": sum(correct) / n_true if n_true else 1.0,
        "duplicate_precision": sum(correct) / len(drops) if drops else 1.0,
        "duplicates_planted": n_true,
        "duplicates_dropped": len(drops),
        "duplicates_correct": sum(correct),
        "false_duplicate_examples": [[p, o, kind.get(p), kind.get(o)] for (p, o), ok in zip(drops, correct) if not ok][
            :20
        ],
        "junk_total": total["junk"],
        "junk_kept": of_kind("junk", "kept"),
        "junk_kept_fraction": of_kind("junk", "kept") / total["junk"] if total["junk"] else 0.0,
        "corrupt_total": total["corrupt"],
        "corrupt_reported": of_kind("corrupt", "corrupt"),
        "eval_copies_total": total["eval_copy"],
        "eval_copies_removed": of_kind("eval_copy", "eval_contamination"),
        "manifest_uids": len(set(manifest["uid"])),
        "truth_uids": len(kind),
        "truth_uids_missing_from_manifest": sum(u not in status for u in kind),
        "status_by_kind": per_kind,
    }


def score_curation(curated_dir: str | Path, truth_path: str | Path) -> dict[str, Any]:
    """Read `<curated_dir>/manifest.parquet` and score it against `truth_path`."""
    import pyarrow.parquet as pq

    cols = pq.read_table(
        Path(curated_dir) / "manifest.parquet", columns=["uid", "path", "status", "duplicate_of"]
    ).to_pydict()
    return {"file": str(truth_path), **score_manifest(cols, json.loads(Path(truth_path).read_text()))}
