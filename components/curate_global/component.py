"""curate_global: the fan-out's global steps — dedup, retrieval, k-means, sampling, shards, manifest.

Runs `dinoflow curate` on the embedding shards of every curate_partition task, launched as
`launch` says (dinoflow.launch.options), like training (dinoflow.launch.training): in the step
(num_nodes 1, gpus_per_node <= 1), under torchrun (gpus_per_node > 1 processes: gloo on CPU, NCCL
on GPUs), or as a Kubeflow Trainer TrainJob (num_nodes > 1: gpus_per_node GPUs of
`accelerator_type` per node, with the tolerations and node selector). The pipeline run id
arrives as `$DINOFLOW_PIPELINE_RUN_ID` (the pod's label) and the shared volume is the DAG's mount
(dinoflow.launch.shared.SHARED_DIR), not inputs, so the step stays cacheable.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def curate_global(
    params_yaml: str,
    overrides: List[str],
    embeddings: Input[List[Artifact]],
    curated: Output[Dataset],
    reports: Output[Artifact],
    report_html: Output[HTML],
    metrics: Output[Metrics],
    launch: dict,
    data_version: str,
):
    """The curated shards + manifest become `curated`; the report becomes `reports` / `report_html`.
    `data_version` (the listing's digest) is unused here: it is an input so that a changed pool misses the cache."""
    import os

    from dinoflow.launch.curation_fanout import run_global_step
    from dinoflow.launch.data_ref import output_dir, publish_ref, resolve
    from dinoflow.launch.options import LaunchOptions
    from dinoflow.launch.steps import log_summary_metrics, publish

    opts = LaunchOptions.from_launch(launch)
    # the curated shards go to the shared volume when mounted; `curated` then refers to them
    out = output_dir(curated.path, "curated")
    summary = run_global_step(
        params_yaml,
        overrides,
        [resolve(e.path) for e in embeddings],
        out_dir=str(out),
        report_dir=reports.path,
        opts=opts,
    )
    publish_ref(curated.path, out)
    publish(os.path.join(reports.path, "curation.html"), report_html.path)
    log_summary_metrics(metrics, summary)
