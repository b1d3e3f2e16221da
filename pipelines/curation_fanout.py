"""The curate stage as a Kubeflow fan-out, built by one function (`curation_tasks`) that the main
DAG (pipelines/dinov2_pipeline.py) calls inside its exit handler and that `curation_fanout`, a
curate-only pipeline, wraps:

    data_version ─▶ curate_plan ─▶ ParallelFor(task g): curate_partition(g) ─▶ curate_global(Collected embeddings)
    launch_options ─────────────────────────────────────────────────────────────▶ curate_global(launch)

data_version (never cached) digests the listing of every curate input (keys, sizes, ETags) and is
an input of the three curation steps: KFP's cache key holds nothing of an s3:// prefix's content,
so without it a changed pool would be served the old curation from cache.

Each curate_partition task decodes and embeds its share of the partitions (pool, seeds, eval
sets); curate_global runs the global steps on all of them. Outputs of the global task: `curated`
(shards + manifest.parquet + manifest.json), `reports`, `report_html`, `metrics` — the same
curated bytes as `dinoflow curate` alone.

Parameters: `groups` decode + embed tasks (at most one per partition: fewer when the pool has
fewer partitions); the global step's processes: `num_nodes` 1 and `procs_per_node` <= 1, in its
pod; 1 and N > 1, torchrun of N processes in its pod (gloo: the pod has no GPU); `num_nodes` M > 1,
a Kubeflow Trainer TrainJob of M GPU nodes with `procs_per_node` GPUs (one process each), placed
like training's (accelerator type, GPU tolerations, node selector); the step's pod then only waits.
These arrive as one `launch` dict that a launch_options task builds from the parameters and checks
first, so a bad value fails the run before any decoding.
The run id and the shared volume come from the pod (pipelines/steps.py), never from inputs, so
every task stays cacheable. Every task runs on the CPU image (a TrainJob of the global step gets
the training image through `image`) and is retried: each writes only its own outputs.
"""

from typing import Dict, List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics

from components.curate_global.component import curate_global
from components.curate_partition.component import curate_partition
from components.curate_plan.component import curate_plan
from components.data_version.component import data_version
from components.images import TRAIN_IMAGE
from components.launch_options.component import launch_options
from dinoflow.launch.trainjob import DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND
from pipelines.steps import DEFAULT_TOLERATIONS, cpu_step, retried, unprivileged_step

PIPELINE_NAME = "dinoflow-curation-fanout"
Outputs = NamedTuple(
    "Outputs", [("curated", Dataset), ("reports", Artifact), ("report_html", HTML), ("metrics", Metrics)]
)


def curation_tasks(cfg: dict, *, groups, num_nodes, procs_per_node, trainjob: dict) -> dsl.PipelineTask:
    """Add plan → ParallelFor decode + embed → global steps to the pipeline being defined; returns
    the global task. cfg: params_yaml + overrides; trainjob: image, trainjob_runtime(_kind),
    accelerator_type, tolerations, node_selector (what a TrainJob of the global step needs)."""
    ver = cpu_step(retried(data_version(**cfg)), "curate: data version", cpu="1", memory="2Gi")
    ver.set_caching_options(enable_caching=False)  # it exists to notice a changed pool: never skip it
    version = ver.output
    plan = curate_plan(**cfg, max_groups=groups, data_version=version)
    plan = cpu_step(retried(plan), "curate: plan", cpu="1", memory="2Gi")
    with dsl.ParallelFor(plan.output, name="curate-partitions") as group:
        # `groups`, not the plan's length: task g takes partitions p with p % groups == g, and the
        # plan starts tasks 0 .. min(groups, partitions) - 1, so every partition has its task
        part = curate_partition(**cfg, group=group, groups=groups, data_version=version)
        cpu_step(retried(part), "curate: decode + embed", cpu="4", memory="16Gi")
    launch = launch_options(num_nodes=num_nodes, gpus_per_node=procs_per_node, **trainjob)
    launch = unprivileged_step(launch, "curate: launch options")
    glob = curate_global(
        **cfg, data_version=version, embeddings=dsl.Collected(part.outputs["embeddings"]), launch=launch.output
    )
    # retried like training: a preempted global step (or its TrainJob's launcher) starts again
    return cpu_step(retried(glob), "curate: global steps", cpu="4", memory="16Gi")


@dsl.pipeline(
    name=PIPELINE_NAME, description="curate as a fan-out: decode + embed per partition group, then the global steps"
)
def curation_fanout(
    params_yaml: str = "",
    overrides: List[str] = [],
    max_groups: int = 4,
    num_nodes: int = 1,
    procs_per_node: int = 1,
    image: str = TRAIN_IMAGE,
    trainjob_runtime: str = DEFAULT_RUNTIME,
    trainjob_runtime_kind: str = DEFAULT_RUNTIME_KIND,
    accelerator_type: str = "nvidia.com/gpu",
    gpu_node_selector: Dict[str, str] = {},
    gpu_tolerations: List[dict] = DEFAULT_TOLERATIONS,
) -> Outputs:
    """max_groups: decode + embed tasks; num_nodes / procs_per_node: the global step's processes
    (see the module docstring); the GPU settings place a TrainJob's pods."""
    trainjob = dict(
        image=image,
        trainjob_runtime=trainjob_runtime,
        trainjob_runtime_kind=trainjob_runtime_kind,
        accelerator_type=accelerator_type,
        tolerations=gpu_tolerations,
        node_selector=gpu_node_selector,
    )
    glob = curation_tasks(
        dict(params_yaml=params_yaml, overrides=overrides),
        groups=max_groups,
        num_nodes=num_nodes,
        procs_per_node=procs_per_node,
        trainjob=trainjob,
    )
    return Outputs(
        curated=glob.outputs["curated"],
        reports=glob.outputs["reports"],
        report_html=glob.outputs["report_html"],
        metrics=glob.outputs["metrics"],
    )
