"""evaluate: frozen-feature k-NN / linear / logistic regression of teacher and student, plus the gate."""

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
) -> bool:
    """Run `dinoflow evaluate`; returns the registry gate's verdict (thresholds under `register`).

    A single bool output (not a NamedTuple): kfp.local resolves only single outputs in `dsl.If`.
    """
    import os

    from dinoflow.launch.gate import gate_verdict
    from dinoflow.launch.steps import log_summary_metrics, publish, run_step, step_config

    wiring = {
        "evaluate.models": {"teacher": os.path.join(teacher.path, "backbone.pth"),
                            "student": os.path.join(student.path, "backbone.pth")},
        "evaluate.report_dir": reports.path,
        "register.eval_report": os.path.join(reports.path, "eval.json"),
    }
    summary = run_step("evaluate", params_yaml, overrides, wiring)
    publish(os.path.join(reports.path, "eval.md"), report_md.path)
    log_summary_metrics(metrics, summary)
    passed, reason = gate_verdict(step_config(params_yaml, overrides, wiring))
    print(f"registry gate {'passed' if passed else 'not passed'}: {reason}")
    return passed
