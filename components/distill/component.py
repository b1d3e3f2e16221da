"""distill: frozen teacher + curated shards → smaller student backbone (its EMA is what ships).

Launch, run id and checkpoints as for pretrain (components/pretrain/component.py).
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def distill(
    params_yaml: str,
    overrides: List[str],
    curated: Input[Dataset],
    teacher: Input[Model],
    student: Output[Model],
    curves: Output[Artifact],
    launch: dict,
):
    """Run `dinoflow distill` from the pretrain step's teacher directory."""
    from dinoflow.launch.data_ref import resolve
    from dinoflow.launch.options import LaunchOptions
    from dinoflow.launch.training import run_training_step

    run_training_step(
        "distill",
        params_yaml,
        overrides,
        inputs={"distill.data": resolve(curated.path), "distill.teacher": teacher.path},
        outputs={"distill.out_dir": student.path, "distill.report_csv": curves.path},
        opts=LaunchOptions.from_launch(launch),
    )
