"""The hostile tars (tests/hostile/tars.py) through every stage that reads shards: curate and
pretrain's shard reader read the good samples around each attack and report the rest."""

from __future__ import annotations

from pathlib import Path

from hostile.consumers import run_curate, run_pretrain_reader
from hostile.corpus import good_png
from hostile.tars import tar_cases


def _folder(root: Path) -> tuple[Path, int]:
    cases = tar_cases([good_png(30 + i) for i in range(8)])
    root.mkdir(parents=True)
    for name, (data, _) in cases.items():
        (root / name).write_bytes(data)
    return root, sum(n for _, n in cases.values())


def test_pretrain_reads_the_good_samples_and_counts_the_refused(tmp_path):
    folder, n_good = _folder(tmp_path / "shards")
    out = run_pretrain_reader(folder, tmp_path / "work")
    assert out.error == ""
    assert out.used == n_good  # every good sample once: a repeated name is not read twice
    assert out.skipped == 2  # the sparse member and the symlink member, refused unread


def test_curate_reports_every_attack_by_name(tmp_path):
    folder, n_good = _folder(tmp_path / "shards")
    out = run_curate(folder, tmp_path / "work")
    assert out.code == 0, out.error
    assert "sparse" in out.manifest["sparse_member.tar/bomb"][1]
    assert "symbolic link" in out.manifest["symlink_member.tar/link"][1]
    assert sum(s != "corrupt" for s, _ in out.manifest.values()) == n_good
    assert "repeated_names.tar/a.png" in out.report["skipped_files"]
    assert "pax_header_3gib.tar" in out.report["skipped_files"]  # its reading stopped at the header
