"""The fan-out's library side: task groups, per-task embedding, the global step in-process and under torchrun."""

import pytest
from curation.conftest import tiny_cfg, write_pool

from dinoflow.curation.pipeline import curate
from dinoflow.errors import DinoflowError
from dinoflow.launch.curation_fanout import embed_group, fanout_groups, run_global_step
from dinoflow.launch.options import LaunchOptions


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool")


def _files(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def test_groups_cover_every_partition_once(pool, tmp_path):
    cfg = tiny_cfg(pool, tmp_path / "x")  # 33 files, 8 per partition: 5 partitions
    assert fanout_groups(cfg, 3) == [0, 1, 2] and fanout_groups(cfg, 99) == [0, 1, 2, 3, 4]
    with pytest.raises(DinoflowError, match="max_groups"):
        fanout_groups(cfg, 0)
    done = [embed_group(cfg, g, 3, tmp_path / f"task{g}")["partitions_computed"] for g in (0, 1, 2.0)]
    assert done == [2, 2, 1]  # the third index arrives as a float, as KFP hands list items over
    with pytest.raises(DinoflowError, match="not one of 3 groups"):
        embed_group(cfg, 3, 3, tmp_path / "task3")


@pytest.mark.slow
def test_global_step_in_process_and_under_torchrun_match_plain_curate(pool, tmp_path):
    from dinoflow.config import dump_config

    cfg = tiny_cfg(pool, tmp_path / "plain")
    curate(cfg)
    expected = _files(tmp_path / "plain/curated")
    tasks = [str(tmp_path / f"task{g}") for g in range(2)]
    for g in range(2):
        embed_group(cfg, g, 2, tasks[g])
    text = dump_config(tiny_cfg(pool, tmp_path / "unused"))
    shared = tmp_path / "shared"
    shared.mkdir()
    # "in-pod": a Kubeflow step pod with the shared volume mounted and the run id set (curate keeps
    # no checkpoints there, and leaves nothing behind)
    for name, procs, shared_dir in (("inproc", 1, ""), ("torchrun", 2, ""), ("in-pod", 1, str(shared))):
        out = tmp_path / name
        opts = LaunchOptions(gpus_per_node=procs, shared_dir=shared_dir or str(tmp_path / "absent"), run_id="run-3")
        summary = run_global_step(
            text, [], tasks, out_dir=str(out / "curated"), report_dir=str(out / "reports"), opts=opts
        )
        assert summary["embedding_shards"]["partitions_computed"] == 0  # every partition came from a task
        assert _files(out / "curated") == expected, name
    assert list(shared.iterdir()) == []


def test_plan_and_embedding_tasks_do_not_check_folders_they_never_write(pool, tmp_path):
    """In a pipeline pod only the global step writes curate.out_dir: the plan and embedding tasks run
    with the stage's default (relative, on a read-only root there) and must not refuse it; curate does."""
    cfg = tiny_cfg(pool, tmp_path / "x")
    cfg = cfg.model_copy(update={"curate": cfg.curate.model_copy(update={"out_dir": "/proc/curated"})})
    assert fanout_groups(cfg, 2) == [0, 1]
    assert embed_group(cfg, 0, 2, tmp_path / "task0")["group"] == 0
    with pytest.raises(DinoflowError, match="curate.out_dir = '/proc/curated' cannot be written"):
        curate(cfg)
