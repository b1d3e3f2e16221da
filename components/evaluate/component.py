"""evaluate: frozen-feature k-NN / linear / logistic regression of teacher and student (the gate runs in register)."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    params_yaml: str,
    overrides: List[str],
    teacher: Input[Model],
    student: Input[Model],
    reports: Output[Artifact],
    report_md: Output[Markdown],
    metrics: Output[Metrics],
):
    """Run `dinoflow evaluate`; eval.json in `reports` records the sha256 of each model file it evaluated."""
    import os

    from dinoflow.launch.steps import log_summary_metrics, publish, run_step

    wiring = {
        "evaluate.models": {
            "teacher": os.path.join(teacher.path, "backbone.pth"),
            "student": os.path.join(student.path, "backbone.pth"),
        },
        "evaluate.report_dir": reports.path,
    }
    summary = run_step("evaluate", params_yaml, overrides, wiring)
    publish(os.path.join(reports.path, "eval.md"), report_md.path)
    log_summary_metrics(metrics, summary)
