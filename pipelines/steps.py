"""Kubernetes settings of the DAG's tasks, in one place for every pipeline here (the main DAG and
the curation fan-out): KFP applies them per task at compile time, and cannot apply them from
outside to a sub-pipeline's inner tasks, so each pipeline builds its tasks through these helpers.

- every step learns its pipeline run id from its pod's `pipeline/runid` label (downward API →
  `$DINOFLOW_PIPELINE_RUN_ID`), never from an input, so cached steps stay cacheable;
- MLflow and S3 credentials come from Kubernetes secrets in the namespace the steps run in;
- every step mounts the shared ReadWriteMany volume (data named by absolute path, checkpoints
  keyed by run and stage so a retried step resumes, TrainJob staging) and runs as a non-root user;
  the launch_options check alone, which reads no data, gets only the non-root identity;
- GPU steps get a memory-backed /dev/shm, GPU type and count, node selector and tolerations from
  pipeline parameters, and retries for preemptible nodes. A step that launches a TrainJob runs on a
  small CPU pod and requests no GPU (the TrainJob's pods get the GPUs, tolerations and node selector).
"""

from kfp import dsl, kubernetes

from dinoflow.config.pipeline_env import KFP_RUN_ID_LABEL, PIPELINE_RUN_ID
from dinoflow.launch.k8s_labels import STEP_LABEL_KEY, STEP_LABEL_VALUE
from dinoflow.launch.secrets import MLFLOW_KEYS, MLFLOW_SECRET, S3_KEYS, S3_SECRET
from dinoflow.launch.shared import SHARED_DIR

# secret key → env var inside the step (the same names as k8s/base/pipeline/secrets.template.yaml)
S3_ENV = {k: k for k in S3_KEYS}
MLFLOW_ENV = {k: k for k in MLFLOW_KEYS}
SHARED_PVC = "dinoflow-shared"  # k8s/base/pipeline/shared-volume.yaml: the ReadWriteMany claim in the steps' namespace
SHM_SIZE = "16Gi"
RUN_AS = 10001  # the images' non-root user
RETRIES = 3  # KFP takes the retry count at compile time, not as a pipeline parameter
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """What every step gets: its run id, credentials, the shared volume (data named by absolute
    path lives there, as do checkpoints), a non-root identity and a display name."""
    task.set_display_name(name)
    kubernetes.mount_pvc(task, pvc_name=SHARED_PVC, mount_path=SHARED_DIR)
    kubernetes.use_field_path_as_env(
        task, env_name=PIPELINE_RUN_ID, field_path=f"metadata.labels['{KFP_RUN_ID_LABEL}']"
    )
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_ENV)
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_ENV)
    kubernetes.set_security_context(task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True)
    # the network policies of k8s/ admit only pods with this label to MLflow and MinIO
    kubernetes.add_pod_label(task, STEP_LABEL_KEY, STEP_LABEL_VALUE)
    return task


def cpu_step(task: dsl.PipelineTask, name: str, cpu: str, memory: str) -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    return step(task, name)


def unprivileged_step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """A step that reads no data and talks to no service (the launch_options check): a non-root
    identity and small resources; no credentials, no shared volume, no run id (least privilege)."""
    task.set_display_name(name)
    task.set_cpu_request("1").set_cpu_limit("1").set_memory_request("1Gi").set_memory_limit("1Gi")
    kubernetes.set_security_context(task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True)
    return retried(task)


def retried(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Retries: a preempted step is retried and resumes from what it keeps on the shared volume."""
    task.set_retry(num_retries=RETRIES, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="600s")
    return task


def gpu_step(
    task: dsl.PipelineTask, name: str, accelerator_type: str, gpus_per_node: int, node_selector: dict, tolerations: list
) -> dsl.PipelineTask:
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus_per_node)
    task.set_cpu_request("8").set_memory_request("32Gi")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    # data-loader workers share batches through /dev/shm; the container default (64 MiB) is too small
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    return step(retried(task), name)


def launcher_step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Multi-node: this pod only stages data, submits the TrainJob and follows it; no GPU."""
    task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("2Gi").set_memory_limit("4Gi")
    return step(retried(task), name)


def training_step(task: dsl.PipelineTask, name: str, multi_node: bool, gpu: dict) -> dsl.PipelineTask:
    return launcher_step(task, f"{name} (TrainJob)") if multi_node else gpu_step(task, name, **gpu)
