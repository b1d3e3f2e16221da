"""launch_options: the DAG's launch parameters as the one `launch` dict a launched step takes
(pretrain, distill, the curation's global step), checked before any work starts: an unknown key
or a bad value (num_nodes 0, a toleration that is not a mapping) fails this small task, naming it,
instead of a training step after curation. Cached (its output follows from its inputs alone);
it reads no data and holds no credentials."""

from typing import Dict, List

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def launch_options(
    num_nodes: int,
    gpus_per_node: int,
    accelerator_type: str,
    image: str,
    trainjob_runtime: str,
    trainjob_runtime_kind: str,
    tolerations: List[dict],
    node_selector: Dict[str, str],
) -> dict:
    """The checked `launch` dict (dinoflow.launch.options.check_launch), defaults filled in."""
    from dinoflow.launch.options import check_launch

    return check_launch(
        dict(
            num_nodes=num_nodes,
            gpus_per_node=gpus_per_node,
            accelerator_type=accelerator_type,
            image=image,
            trainjob_runtime=trainjob_runtime,
            trainjob_runtime_kind=trainjob_runtime_kind,
            tolerations=tolerations,
            node_selector=node_selector,
        )
    )
