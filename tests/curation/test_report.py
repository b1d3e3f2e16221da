"""The report's PNGs: which exist follows the summary alone, and ranks drawing side by side give the same files."""

from pathlib import Path

import numpy as np
from PIL import Image

from dinoflow.config import load_config
from dinoflow.curation.report import MAX_PICTURES, draw_pictures, pictures
from dinoflow.curation.report_data import HIST_EDGES, Summary
from dinoflow.data.statuses import STATUSES


def _summary(thumbs: bool) -> Summary:
    rng = np.random.default_rng(0)
    hist = {
        k: rng.integers(0, 50, len(HIST_EDGES) - 1) for k in ("nn_similarity", "eval_similarity", "seed_similarity")
    }
    img = Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8))
    return Summary(
        counts={s: 3 for s in STATUSES},
        details={},
        level0_sizes=np.array([9, 5, 2]),
        level0_kept=np.array([4, 4, 2]),
        hists=hist,
        cluster_thumbs=[("cluster 0", [img, img]), ("cluster 1", [img])] if thumbs else [],
        pair_thumbs=[("a ~ b", [img, img])] if thumbs else [("a ~ b", [])],
    )


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.png"))}


def test_ranks_draw_disjoint_shares_of_the_same_pictures(tmp_path):
    c = load_config(None, ["tracking.enabled=false"]).curate
    funnel = [{"step": "input", "remaining": 10}, {"step": "junk", "remaining": 8}]
    pics = pictures(c, _summary(thumbs=True), funnel)
    assert len(pics) == MAX_PICTURES  # every kind: ranks from MAX_PICTURES on skip the summary
    assert [p.file for p in pics] == [
        "curation_funnel.png",
        "curation_clusters.png",
        "curation_similarity.png",
        "curation_clusters_grid.png",
        "curation_dup_pairs.png",
    ]
    draw_pictures(pics, tmp_path / "one")
    draw_pictures(pics, tmp_path / "r0", 0, 2)
    draw_pictures(pics, tmp_path / "r1", 1, 2)
    r0, r1 = _files(tmp_path / "r0"), _files(tmp_path / "r1")
    assert not set(r0) & set(r1) and r0 and r1
    assert {**r0, **r1} == _files(tmp_path / "one")


def test_grids_without_thumbnails_are_not_pictures(tmp_path):
    c = load_config(None, ["tracking.enabled=false"]).curate
    pics = pictures(c, _summary(thumbs=False), [{"step": "input", "remaining": 1}])
    assert [p.title for p in pics] == ["funnel", "cluster sizes", "similarity histograms"]
    draw_pictures(pics, tmp_path, 3, 4)  # more ranks than pictures: the last draws nothing
    assert not list(tmp_path.glob("*.png"))
