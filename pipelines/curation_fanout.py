"""The curate stage as a Kubeflow fan-out (a sub-pipeline the main DAG can call in place of `curate`):

    curate_plan ─▶ ParallelFor(task g): curate_partition(g) ─▶ curate_global(Collected embeddings)

Each curate_partition task decodes and embeds its share of the partitions (pool, seeds, eval
sets); curate_global runs the global steps on all of them, in its pod, under torchrun, or as a
TrainJob. Outputs: `curated` (shards + manifest.parquet + manifest.json), `reports`,
`report_html`, `metrics` — the same artifacts as the single `curate` component, and the same
curated bytes as `dinoflow curate` alone.

    from pipelines.curation_fanout import curation_fanout
    cur = curation_fanout(params_yaml=params_yaml, overrides=overrides, max_groups=8, ...)
    pretrain(..., curated=cur.outputs["curated"], ...)
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics

from components.curate_global.component import curate_global
from components.curate_partition.component import curate_partition
from components.curate_plan.component import curate_plan
from components.images import TRAIN_IMAGE

PIPELINE_NAME = "dinoflow-curation-fanout"
Outputs = NamedTuple("Outputs", curated=Dataset, reports=Artifact, report_html=HTML, metrics=Metrics)


@dsl.pipeline(name=PIPELINE_NAME, description="curate as a fan-out: decode + embed per partition group, then the global steps")
def curation_fanout(
    params_yaml: str = "",
    overrides: List[str] = [],
    max_groups: int = 4,
    num_nodes: int = 1,
    procs_per_node: int = 1,
    image: str = TRAIN_IMAGE,
    trainjob_runtime: str = "dinoflow-torch-distributed",
    trainjob_runtime_kind: str = "TrainingRuntime",
    shared_dir: str = "/mnt/dinoflow-shared",
    run_id: str = "local",
) -> Outputs:
    """max_groups: decode + embed tasks (at most one per partition); num_nodes / procs_per_node: the
    global step's processes (1 / 1: in the step; 1 / N: torchrun; M > 1: a TrainJob of M nodes)."""
    plan = curate_plan(params_yaml=params_yaml, overrides=overrides, max_groups=max_groups)
    plan.set_display_name("curate: plan")
    with dsl.ParallelFor(plan.output, name="partition-groups") as group:
        part = curate_partition(params_yaml=params_yaml, overrides=overrides, group=group, groups=max_groups)
        part.set_display_name("curate: decode + embed")
    glob = curate_global(
        params_yaml=params_yaml, overrides=overrides, embeddings=dsl.Collected(part.outputs["embeddings"]),
        num_nodes=num_nodes, procs_per_node=procs_per_node, image=image, trainjob_runtime=trainjob_runtime,
        trainjob_runtime_kind=trainjob_runtime_kind, shared_dir=shared_dir, run_id=run_id,
    )
    glob.set_display_name("curate: global steps")
    return Outputs(curated=glob.outputs["curated"], reports=glob.outputs["reports"],
                   report_html=glob.outputs["report_html"], metrics=glob.outputs["metrics"])
