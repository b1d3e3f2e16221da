"""register: every student into the MLflow model registry; the gate moves the alias `champion`."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    params_yaml: str,
    overrides: List[str],
    student: Input[Model],
    eval_reports: Input[Artifact],
    registry: Output[Artifact],
):
    """Run `dinoflow register` (always: it applies the gate itself); `registry` is reports/registry.json."""
    import os

    from dinoflow.launch.gate import gate_line
    from dinoflow.launch.steps import run_step

    summary = run_step(
        "register",
        params_yaml,
        overrides,
        {
            "register.model_path": student.path,
            "register.eval_report": os.path.join(eval_reports.path, "eval.json"),
            "register.report": registry.path,
        },
    )
    print(gate_line(summary))
