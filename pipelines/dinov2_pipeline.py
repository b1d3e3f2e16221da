"""The dinoflow DAG: curate → pretrain → distill → evaluate → register (which applies the gate itself).

Compile / run / submit through the CLI (from the repository root):

    dinoflow pipeline compile -o dinov2_pipeline.yaml     # IR YAML for the KFP UI or API
    dinoflow pipeline run --local --demo                  # the same DAG via kfp.local, on this machine
    dinoflow pipeline submit --host https://kfp.example.com

Cluster settings live here, not in the components: MLflow and S3 credentials from Kubernetes
secrets (`k8s/secrets.template.yaml`), a memory-backed /dev/shm for data loaders, GPU type and
count, node selector and tolerations from pipeline parameters, retries for preemptible GPU nodes
(training resumes from its checkpoint), and caching everywhere except `register`, which has a
side effect outside the pipeline (the MLflow registry).
"""

from typing import Dict, List

from kfp import dsl, kubernetes

from components.curate.component import curate
from components.distill.component import distill
from components.evaluate.component import evaluate
from components.images import TRAIN_IMAGE
from components.pretrain.component import pretrain
from components.register.component import register

PIPELINE_NAME = "dinoflow-dinov2"
S3_SECRET = "dinoflow-s3"
MLFLOW_SECRET = "dinoflow-mlflow"
# secret key → env var inside the step (the same names as k8s/secrets.template.yaml)
S3_ENV = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")}
MLFLOW_ENV = {k: k for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
SHM_SIZE = "16Gi"
RETRIES = 3  # KFP takes the retry count at compile time, not as a pipeline parameter
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
TRAINJOB_RUNTIME = "dinoflow-torch-distributed"  # k8s/training-runtime.yaml: torch-distributed + shared volume
SHARED_DIR = "/mnt/dinoflow-shared"


def _with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_ENV)
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_ENV)
    return task


def _cpu_step(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    return _with_credentials(task)


def _gpu_step(task: dsl.PipelineTask, accelerator_type: str, gpus_per_node: int,
              node_selector: dict, tolerations: list) -> dsl.PipelineTask:
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus_per_node)
    task.set_cpu_request("8").set_memory_request("32Gi")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    # data-loader workers share batches through /dev/shm; the container default (64 MiB) is too small
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    # spot/preemptible GPU nodes: the retried step resumes from the checkpoint in its output dir
    task.set_retry(num_retries=RETRIES, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="600s")
    return _with_credentials(task)


@dsl.pipeline(name=PIPELINE_NAME, description="DINOv2-style self-supervised pipeline: curate, pretrain, distill, evaluate, register")
def dinov2_pipeline(
    params_yaml: str = "",
    overrides: List[str] = [],
    accelerator_type: str = "nvidia.com/gpu",
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    gpu_node_selector: Dict[str, str] = {},
    gpu_tolerations: List[dict] = DEFAULT_TOLERATIONS,
    image: str = TRAIN_IMAGE,
    trainjob_runtime: str = TRAINJOB_RUNTIME,
    trainjob_runtime_kind: str = "TrainingRuntime",
    shared_dir: str = SHARED_DIR,
):
    """params_yaml: the full params.yaml text (compile embeds the repo's); overrides: `key=value` list."""
    launch = dict(num_nodes=num_nodes, gpus_per_node=gpus_per_node, image=image,
                  trainjob_runtime=trainjob_runtime,
                  trainjob_runtime_kind=trainjob_runtime_kind, shared_dir=shared_dir, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    gpu = dict(accelerator_type=accelerator_type, gpus_per_node=gpus_per_node,
               node_selector=gpu_node_selector, tolerations=gpu_tolerations)

    cur = _cpu_step(curate(params_yaml=params_yaml, overrides=overrides), cpu="4", memory="16Gi")
    cur.set_display_name("curate")

    pre = _gpu_step(pretrain(params_yaml=params_yaml, overrides=overrides, curated=cur.outputs["curated"], **launch), **gpu)
    pre.set_display_name("pretrain")

    dis = _gpu_step(distill(params_yaml=params_yaml, overrides=overrides, curated=cur.outputs["curated"],
                            teacher=pre.outputs["teacher"], **launch), **gpu)
    dis.set_display_name("distill")

    ev = _cpu_step(evaluate(params_yaml=params_yaml, overrides=overrides, teacher=pre.outputs["teacher"],
                            student=dis.outputs["student"]), cpu="4", memory="16Gi")
    ev.set_display_name("evaluate")

    # always runs: every candidate is registered; the gate inside decides whether it takes the alias
    reg = _cpu_step(register(params_yaml=params_yaml, overrides=overrides, student=dis.outputs["student"],
                             eval_reports=ev.outputs["reports"]), cpu="1", memory="2Gi")
    reg.set_display_name("register")
    reg.set_caching_options(enable_caching=False)  # writes to the MLflow registry: never skip it


if __name__ == "__main__":  # python -m pipelines.dinov2_pipeline → same as `dinoflow pipeline compile`
    import sys

    from dinoflow.pipeline_cli import main

    raise SystemExit(main(["compile", *sys.argv[1:]]))
