"""close_stale_runs: as a pipeline run starts, close the MLflow parent runs of earlier pipeline runs
whose exit handler never ran (a terminated run); see dinoflow.launch.stale_runs for what counts as
stale. Never cached (it looks at the present), retried (closing twice is harmless)."""

from typing import List

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def close_stale_runs(params_yaml: str, overrides: List[str]):
    """Set KILLED, with the reason as a tag, the stale RUNNING parents of other pipeline runs."""
    from dinoflow.config.pipeline_env import pipeline_run_id
    from dinoflow.launch.stale_runs import close_stale_pipeline_runs
    from dinoflow.launch.steps import step_config

    closed = close_stale_pipeline_runs(step_config(params_yaml, overrides), pipeline_run_id())
    print(f"closed {len(closed)} stale pipeline parent run(s): {closed}")
