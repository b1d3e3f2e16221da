"""The dinoflow DAG: curate → pretrain → distill → evaluate → register (which applies the gate itself),
inside an exit handler that closes the pipeline's MLflow parent run whatever happens.

Compile / run / submit through the CLI (`pipelines/cli.py`; the packages are installed, any directory):

    dinoflow pipeline compile -c my-cluster-params.yaml -o dinov2_pipeline.yaml
    dinoflow pipeline run --local --demo                  # the same DAG via kfp.local, on this machine
    dinoflow pipeline submit --host https://kfp.example.com -c my-cluster-params.yaml

Cluster settings live here, not in the components:
- every step learns its pipeline run id from its pod's `pipeline/runid` label (downward API →
  `$DINOFLOW_PIPELINE_RUN_ID`), never from an input, so cached steps stay cacheable;
- MLflow and S3 credentials come from Kubernetes secrets in the namespace the steps run in;
- training steps mount the shared ReadWriteMany volume (checkpoints keyed by run and stage, so a
  retried step resumes; TrainJob staging), get a memory-backed /dev/shm, GPU type and count, node
  selector and tolerations from pipeline parameters, and retries for preemptible nodes. With
  `num_nodes > 1` the step only submits a Kubeflow Trainer TrainJob and waits: it runs on a small
  CPU pod and requests no GPU (the TrainJob's pods get the GPUs, tolerations and node selector);
- `register` and the exit handler are never cached (they write to the MLflow registry / runs).
Supported backends: KFP 2.5 or newer (accelerators, node selectors, tolerations from parameters
and step retries); the security context below is applied by backends 2.16 and newer.
"""

from typing import Dict, List

from kfp import dsl, kubernetes

from components.curate.component import curate
from components.distill.component import distill
from components.evaluate.component import evaluate
from components.finalize.component import finalize
from components.images import TRAIN_IMAGE
from components.pretrain.component import pretrain
from components.register.component import register
from dinoflow.launch.secrets import MLFLOW_KEYS, MLFLOW_SECRET, S3_KEYS, S3_SECRET
from dinoflow.launch.shared import SHARED_DIR
from dinoflow.launch.trainjob import DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND
from dinoflow.pipeline_env import KFP_RUN_ID_LABEL, PIPELINE_RUN_ID

PIPELINE_NAME = "dinoflow-dinov2"
# secret key → env var of the same name inside the step
S3_ENV = {k: k for k in S3_KEYS}
MLFLOW_ENV = {k: k for k in MLFLOW_KEYS}
SHARED_PVC = "dinoflow-shared"  # k8s/base/pipeline/shared-volume.yaml: the ReadWriteMany claim in the steps' namespace
SHM_SIZE = "16Gi"
RUN_AS = 10001  # the images' non-root user
RETRIES = 3  # KFP takes the retry count at compile time, not as a pipeline parameter
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """What every step gets: its run id, credentials, the shared volume (data named by absolute
    path lives there, as do checkpoints), a non-root identity and a display name."""
    task.set_display_name(name)
    kubernetes.mount_pvc(task, pvc_name=SHARED_PVC, mount_path=SHARED_DIR)
    kubernetes.use_field_path_as_env(task, env_name=PIPELINE_RUN_ID, field_path=f"metadata.labels['{KFP_RUN_ID_LABEL}']")
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_ENV)
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_ENV)
    kubernetes.set_security_context(task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True)
    return task


def _cpu_step(task: dsl.PipelineTask, name: str, cpu: str, memory: str) -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    return _step(task, name)


def _training_pod(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Retries: a preempted step is retried and resumes from its checkpoint on the shared volume."""
    task.set_retry(num_retries=RETRIES, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="600s")
    return task


def _gpu_step(task: dsl.PipelineTask, name: str, accelerator_type: str, gpus_per_node: int,
              node_selector: dict, tolerations: list) -> dsl.PipelineTask:
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus_per_node)
    task.set_cpu_request("8").set_memory_request("32Gi")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    # data-loader workers share batches through /dev/shm; the container default (64 MiB) is too small
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    return _step(_training_pod(task), name)


def _launcher_step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Multi-node: this pod only stages data, submits the TrainJob and follows it; no GPU."""
    task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("2Gi").set_memory_limit("4Gi")
    return _step(_training_pod(task), name)


def _training_step(task: dsl.PipelineTask, name: str, multi_node: bool, gpu: dict) -> dsl.PipelineTask:
    return _launcher_step(task, f"{name} (TrainJob)") if multi_node else _gpu_step(task, name, **gpu)


def _after_curation(cfg: dict, launch: dict, gpu: dict, curated, multi_node: bool) -> None:
    """pretrain → distill → evaluate → register, on one node (the steps hold the GPUs) or on many
    (the steps launch TrainJobs). The chain is built once per shape, under dsl.If / dsl.Else, rather
    than joining the two training steps with dsl.OneOf, which kfp.local cannot run."""
    pre = _training_step(pretrain(**cfg, **launch, curated=curated), "pretrain", multi_node, gpu)
    teacher = pre.outputs["teacher"]
    dis = _training_step(distill(**cfg, **launch, curated=curated, teacher=teacher), "distill", multi_node, gpu)
    student = dis.outputs["student"]
    ev = _cpu_step(evaluate(**cfg, teacher=teacher, student=student), "evaluate", cpu="4", memory="16Gi")
    # every candidate is registered; the gate inside decides whether it takes the alias
    reg = _cpu_step(register(**cfg, student=student, eval_reports=ev.outputs["reports"]), "register",
                    cpu="1", memory="2Gi")
    reg.set_caching_options(enable_caching=False)  # writes to the MLflow registry: never skip it


@dsl.pipeline(name=PIPELINE_NAME, description="DINOv2-style self-supervised pipeline: curate, pretrain, distill, evaluate, register")
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
):
    """params_yaml: the params (YAML or one-line JSON) — no laptop defaults: name your data (s3:// or
    absolute paths on mounted volumes); overrides: `key=value` list applied on top."""
    cfg = dict(params_yaml=params_yaml, overrides=overrides)
    # GPU settings are inputs too: the TrainJob's pods need them (and kfp.local resolves a condition
    # branch's accelerator settings only from its tasks' inputs)
    launch = dict(num_nodes=num_nodes, gpus_per_node=gpus_per_node, accelerator_type=accelerator_type, image=image,
                  trainjob_runtime=trainjob_runtime, trainjob_runtime_kind=trainjob_runtime_kind,
                  shared_dir=SHARED_DIR, tolerations=gpu_tolerations, node_selector=gpu_node_selector)
    gpu = dict(accelerator_type=accelerator_type, gpus_per_node=gpus_per_node,
               node_selector=gpu_node_selector, tolerations=gpu_tolerations)

    done = _cpu_step(finalize(**cfg, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), "finalize", cpu="1", memory="1Gi")
    done.set_caching_options(enable_caching=False)  # closes this run's MLflow parent: always runs
    with dsl.ExitHandler(done, name="dinoflow"):
        cur = _cpu_step(curate(**cfg), "curate", cpu="4", memory="16Gi")
        with dsl.If(num_nodes == 1, name="one-node"):
            _after_curation(cfg, launch, gpu, cur.outputs["curated"], multi_node=False)
        with dsl.Else(name="multi-node"):
            _after_curation(cfg, launch, gpu, cur.outputs["curated"], multi_node=True)
