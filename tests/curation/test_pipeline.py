"""End-to-end `curate` on the demo pool (slow): acceptance metrics, determinism, resume after a kill."""

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from dinoflow.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from dinoflow.data.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(load_config(None, [f"demo.out_dir={root}", "tracking.enabled=false"]))
    return root


def _cfg(demo: Path, out: Path, *extra: str):
    return load_config(None, [
        f"curate.sources=[{demo}/pool]", f"curate.seeds={demo}/seeds", f"curate.eval_sets=[{demo}/eval]",
        f"curate.out_dir={out}/curated", f"curate.report_dir={out}/reports", "curate.chunk_size=700",
        "curate.shard_size=800", "tracking.enabled=false", *extra,
    ])


def test_curate_demo_acceptance_determinism_and_resume(demo, tmp_path):
    import pyarrow.parquet as pq

    from dinoflow.curation.pipeline import curate

    a = curate(_cfg(demo, tmp_path / "a"))
    gt = a["ground_truth"]
    assert gt["duplicate_recall"] >= 0.95 and gt["duplicate_precision"] >= 0.95, gt
    assert gt["junk_kept_fraction"] <= 0.05
    assert gt["corrupt_reported"] == gt["corrupt_total"] == 20
    assert gt["eval_copies_removed"] == gt["eval_copies_total"]
    assert gt["manifest_uids"] == gt["input_uids"] == len(list((demo / "pool").iterdir()))

    man = pq.read_table(tmp_path / "a/curated/manifest.parquet").to_pandas()
    assert man.uid.is_unique and len(man) == gt["input_uids"]
    assert set(man.status) <= {"kept", "corrupt", "junk", "exact_dup", "near_dup", "eval_contamination", "not_retrieved", "not_sampled"}
    assert (man.status == "kept").sum() == a["counts"]["kept"]
    dups = man[man.status.isin(["exact_dup", "near_dup"])]
    assert dups.duplicate_of.isin(man.uid).all()
    report = json.loads((tmp_path / "a/reports/curation.json").read_text())
    assert [f["remaining"] for f in report["funnel"]] == sorted([f["remaining"] for f in report["funnel"]], reverse=True)
    for png in report["pngs"].values():
        assert (tmp_path / "a/reports" / png).stat().st_size > 1000
    assert (tmp_path / "a/reports/curation.html").read_text().count("<img") == len(report["pngs"])

    # Kill a second run after two embedding chunks, then rerun: cached chunks are reused and
    # the result is byte-identical to the uninterrupted run.
    class Killed(RuntimeError):
        pass

    def kill_after_two(n: int) -> None:
        if n == 2:
            raise Killed()

    with pytest.raises(Killed):
        curate(_cfg(demo, tmp_path / "b"), on_chunk=kill_after_two)
    assert len(list((tmp_path / "b/curated/.cache").glob("emb-*.npy"))) == 2
    b = curate(_cfg(demo, tmp_path / "b"))
    assert b["embedding_cache"]["chunks_cached"] == 2
    assert b["embedding_cache"]["chunks_computed"] == a["embedding_cache"]["chunks_computed"] - 2
    files_a = sorted(p.name for p in (tmp_path / "a/curated").iterdir() if p.is_file())
    files_b = sorted(p.name for p in (tmp_path / "b/curated").iterdir() if p.is_file())
    assert files_a == files_b and "manifest.parquet" in files_a and any(f.endswith(".tar") for f in files_a)
    for f in files_a:
        assert filecmp.cmp(tmp_path / "a/curated" / f, tmp_path / "b/curated" / f, shallow=False), f

    # A third run over finished output rewrites no shard.
    c = curate(_cfg(demo, tmp_path / "b"))
    assert c["shards_reused"] == c["n_shards"] > 0
    assert c["embedding_cache"]["chunks_computed"] == 0

    # Balanced sampling to a target size (same cache: no embedding work).
    s = curate(_cfg(demo, tmp_path / "b", "curate.target_size=1000", "curate.kmeans_levels=[50,5]"))
    assert s["embedding_cache"]["chunks_computed"] == 0
    assert s["counts"]["kept"] == 1000
    man = pq.read_table(tmp_path / "b/curated/manifest.parquet").to_pandas()
    assert (man.status == "not_sampled").sum() == s["counts"]["not_sampled"] > 0
    info = json.loads((tmp_path / "b/reports/curation.json").read_text())["clusters"]
    assert info["entropy_after"][-1] > info["entropy_before"][-1]  # the top level is balanced first
    kept = man[man.status == "kept"]
    assert (kept.cluster_l0 >= 0).all() and (kept.cluster_l1 >= 0).all()
    assert np.isfinite(kept.seed_similarity).all()
