"""register: the student into the MLflow model registry (alias `champion` when the gate passes)."""

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
    """Run `dinoflow register`; `registry` is reports/registry.json (model name, version, alias, verdict)."""
    import os

    from dinoflow.launch.steps import run_step

    run_step("register", params_yaml, overrides, {
        "register.model_path": student.path,
        "register.eval_report": os.path.join(eval_reports.path, "eval.json"),
        "register.report": registry.path,
    })
