"""pretrain: curated shards → teacher backbone (DINOv2 self-supervised recipe).

One GPU runs in the step; N GPUs on one node run under torchrun in the step; several nodes run
as a Kubeflow Trainer TrainJob that the step submits and waits for (dinoflow.launch.training).
`launch` holds those resources (dinoflow.launch.options: num_nodes, gpus_per_node, the TrainJob's
image, runtime and GPU placement), as the DAG's launch_options task built and checked them.
The pipeline run id arrives as `$DINOFLOW_PIPELINE_RUN_ID` (the pod's label), not as an input, so
the step stays cacheable; checkpoints go to the shared volume keyed by run and stage, so a retried
step resumes.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def pretrain(
    params_yaml: str,
    overrides: List[str],
    curated: Input[Dataset],
    teacher: Output[Model],
    curves: Output[Artifact],
    launch: dict,
):
    """Run `dinoflow pretrain`; `teacher` holds backbone.pth + config.yaml."""
    from dinoflow.launch.data_ref import resolve
    from dinoflow.launch.options import LaunchOptions
    from dinoflow.launch.training import run_training_step

    run_training_step(
        "pretrain",
        params_yaml,
        overrides,
        inputs={"pretrain.data": resolve(curated.path)},
        outputs={"pretrain.out_dir": teacher.path, "pretrain.report_csv": curves.path},
        opts=LaunchOptions.from_launch(launch),
    )
