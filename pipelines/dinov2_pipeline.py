"""The dinoflow DAG: curate (as a fan-out) → pretrain → distill → evaluate → register (which
applies the gate itself), inside an exit handler that closes the pipeline's MLflow parent run
whatever happens; and since KFP may skip the exit handler after a terminate, each run's first
steps also close the parents that earlier runs left RUNNING (components/close_stale_runs).

Compile / run / submit through the CLI (`pipelines/cli.py`; the packages are installed, any directory):

    dinoflow pipeline compile -c my-cluster-params.yaml -o dinov2_pipeline.yaml
    dinoflow pipeline run --local --demo                  # the same DAG via kfp.local, on this machine
    dinoflow pipeline submit --host https://kfp.example.com -c my-cluster-params.yaml

Curation runs as the fan-out of pipelines/curation_fanout.py: `curate_plan` lists the pool,
`curate_groups` `curate_partition` tasks decode and embed their partitions in parallel, and
`curate_global` runs the global steps (dedup, retrieval, k-means, sampling) on every task's
embeddings. The global step's processes: `curate_num_nodes` 1 (default), in its pod, with
`curate_procs_per_node` > 1 as torchrun processes (gloo, CPU); `curate_num_nodes` > 1, a TrainJob of
that many GPU nodes with `curate_procs_per_node` GPUs each, placed with the training GPU settings
(`accelerator_type`, `gpu_tolerations`, `gpu_node_selector`). Its scale is set apart from
training's (`num_nodes`, `gpus_per_node`): a pool is curated once and trained on many times.

Cluster settings (pipelines/steps.py) go on every task here, fan-out tasks included: run id from
the pod label, secrets, the shared volume, a non-root identity, resources; training steps hold GPUs
on one node (`num_nodes == 1`) or launch a TrainJob from a small CPU pod (`num_nodes > 1`), with
retries for preemptible nodes; `register` and the exit handler are never cached (they write to the
MLflow registry / runs). Supported backends: KFP 2.5 or newer (accelerators, node selectors,
tolerations from parameters and step retries); the security context is applied by backends 2.16
and newer.
"""

from typing import Dict, List

from kfp import dsl

from components.close_stale_runs.component import close_stale_runs
from components.distill.component import distill
from components.evaluate.component import evaluate
from components.finalize.component import finalize
from components.images import TRAIN_IMAGE
from components.launch_options.component import launch_options
from components.pretrain.component import pretrain
from components.register.component import register
from dinoflow.launch.trainjob import DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND
from pipelines.curation_fanout import curation_tasks
from pipelines.steps import DEFAULT_TOLERATIONS, cpu_step, retried, training_step, unprivileged_step

PIPELINE_NAME = "dinoflow-dinov2"


def _after_curation(cfg: dict, launch, gpu: dict, curated, multi_node: bool) -> None:
    """pretrain → distill → evaluate → register, on one node (the steps hold the GPUs) or on many
    (the steps launch TrainJobs). The chain is built once per shape, under dsl.If / dsl.Else, rather
    than joining the two training steps with dsl.OneOf, which kfp.local cannot run. `launch`: the
    launch_options task's checked dict, which the training steps take whole."""
    pre = training_step(pretrain(**cfg, launch=launch, curated=curated), "pretrain", multi_node, gpu)
    teacher = pre.outputs["teacher"]
    dis = training_step(distill(**cfg, launch=launch, curated=curated, teacher=teacher), "distill", multi_node, gpu)
    student = dis.outputs["student"]
    ev = cpu_step(retried(evaluate(**cfg, teacher=teacher, student=student)), "evaluate", cpu="4", memory="16Gi")
    # every candidate is registered; the gate inside decides whether it takes the alias. Not retried:
    # a second attempt after a failure past create_model_version would register the candidate twice
    reg = cpu_step(
        register(**cfg, student=student, eval_reports=ev.outputs["reports"]), "register", cpu="1", memory="2Gi"
    )
    reg.set_caching_options(enable_caching=False)  # writes to the MLflow registry: never skip it


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="DINOv2-style self-supervised pipeline: curate, pretrain, distill, evaluate, register",
)
def dinov2_pipeline(
    params_yaml: str,
    overrides: List[str] = [],
    accelerator_type: str = "nvidia.com/gpu",
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    gpu_node_selector: Dict[str, str] = {},
    gpu_tolerations: List[dict] = DEFAULT_TOLERATIONS,
    image: str = TRAIN_IMAGE,
    trainjob_runtime: str = DEFAULT_RUNTIME,  # k8s/base/pipeline/training-runtime.yaml
    trainjob_runtime_kind: str = DEFAULT_RUNTIME_KIND,
    curate_groups: int = 4,
    curate_num_nodes: int = 1,
    curate_procs_per_node: int = 1,
):
    """params_yaml: the params (YAML or one-line JSON) — no laptop defaults: name your data (s3:// or
    absolute paths on mounted volumes); overrides: `key=value` list applied on top; curate_*: the
    curation fan-out (module docstring)."""
    cfg = dict(params_yaml=params_yaml, overrides=overrides)
    # GPU settings are in the launch dict too: the TrainJob's pods need them
    trainjob = dict(
        image=image,
        trainjob_runtime=trainjob_runtime,
        trainjob_runtime_kind=trainjob_runtime_kind,
        accelerator_type=accelerator_type,
        tolerations=gpu_tolerations,
        node_selector=gpu_node_selector,
    )
    gpu = dict(
        accelerator_type=accelerator_type,
        gpus_per_node=gpus_per_node,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
    )

    done = finalize(**cfg, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
    done = cpu_step(retried(done), "finalize", cpu="1", memory="1Gi")  # setting a run's end state twice is harmless
    done.set_caching_options(enable_caching=False)  # closes this run's MLflow parent: always runs
    with dsl.ExitHandler(done, name="dinoflow"):
        # KFP may not run an exit handler after a terminate: each run closes such leftovers as it starts
        stale = cpu_step(retried(close_stale_runs(**cfg)), "close stale runs", cpu="1", memory="1Gi")
        stale.set_caching_options(enable_caching=False)
        # the training steps' one `launch` parameter, checked before curation starts
        launch = launch_options(num_nodes=num_nodes, gpus_per_node=gpus_per_node, **trainjob)
        launch = unprivileged_step(launch, "training: launch options")
        cur = curation_tasks(
            cfg,
            groups=curate_groups,
            num_nodes=curate_num_nodes,
            procs_per_node=curate_procs_per_node,
            trainjob=trainjob,
        )
        with dsl.If(num_nodes == 1, name="one-node"):
            _after_curation(cfg, launch.output, gpu, cur.outputs["curated"], multi_node=False)
        with dsl.Else(name="multi-node"):
            _after_curation(cfg, launch.output, gpu, cur.outputs["curated"], multi_node=True)
