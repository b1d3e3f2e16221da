"""curate_partition: one fan-out task — decode + embed every partition p with p % groups == group.

Its output holds one embedding shard per partition (with the rows' uids), for curate_global.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def curate_partition(
    params_yaml: str, overrides: List[str], group: int, groups: int, data_version: str, embeddings: Output[Artifact]
):
    """Decode + embed this task's partitions of the pool, the seeds and the eval sets into `embeddings`.
    `data_version` (the listing's digest) is unused here: it is an input so that a changed pool misses the cache."""
    from dinoflow.launch.curation_fanout import embed_group
    from dinoflow.launch.data_ref import output_dir, publish_ref
    from dinoflow.launch.steps import step_config

    # on the shared volume when mounted: the artifact then holds only a reference (dinoflow.launch.data_ref)
    out = output_dir(embeddings.path, f"curate-embeddings-{int(group)}-of-{int(groups)}")
    embed_group(step_config(params_yaml, overrides), group, groups, out)
    publish_ref(embeddings.path, out)
