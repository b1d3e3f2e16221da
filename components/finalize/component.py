"""finalize: the pipeline's exit handler — ends its MLflow parent run with the run's final state and
names it after the KFP run. Runs whether the steps succeeded, failed or were cancelled."""

from typing import List

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finalize(params_yaml: str, overrides: List[str], run_name: str, status: dsl.PipelineTaskFinalStatus):
    """Close the parent run of this pipeline run (found by `$DINOFLOW_PIPELINE_RUN_ID`)."""
    from dinoflow.launch.steps import finish_pipeline

    finish_pipeline(params_yaml, overrides, state=status.state, run_name=run_name)
