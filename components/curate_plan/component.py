"""curate_plan: how many decode + embed tasks the curation fan-out starts (one per group of partitions).

The fan-out's first step: it also refuses, before any task starts, params that name data by a
relative path inside a step pod (check_pod_paths).
"""

from typing import List

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def curate_plan(params_yaml: str, overrides: List[str], max_groups: int, data_version: str) -> List[int]:
    """List the pool; return the task indices [0, min(max_groups, partitions)). `data_version` (the
    listing's digest) is unused here: it is an input so that a changed pool misses the cache."""
    from dinoflow.launch.curation_fanout import fanout_groups
    from dinoflow.launch.steps import check_pod_paths, step_config

    cfg = step_config(params_yaml, overrides)
    check_pod_paths("curate", cfg)
    return fanout_groups(cfg, max_groups)
