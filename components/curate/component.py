"""curate: raw pool (+ seeds, eval sets, named in params) → curated shards + curation report."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def curate(
    params_yaml: str,
    overrides: List[str],
    curated: Output[Dataset],
    reports: Output[Artifact],
    report_html: Output[HTML],
    metrics: Output[Metrics],
):
    """Run `dinoflow curate`; the curated shards and manifest become the `curated` Dataset."""
    import os

    from dinoflow.launch.steps import log_summary_metrics, publish, run_step

    summary = run_step("curate", params_yaml, overrides, {"curate.out_dir": curated.path, "curate.report_dir": reports.path})
    publish(os.path.join(reports.path, "curation.html"), report_html.path)
    log_summary_metrics(metrics, summary)
