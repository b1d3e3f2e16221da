"""One training step, three ways, chosen by the resources it is given:

- `num_nodes == 1` and at most one GPU: the stage function runs in this process;
- `num_nodes == 1` and N > 1 GPUs: `torchrun --nproc-per-node=N -m dinoflow <stage>` in this pod;
- `num_nodes > 1`: a Kubeflow Trainer `TrainJob` that this step submits and waits for.

TrainJob pods do not see the step pod's artifact paths, so in that mode the step copies its
inputs to a shared ReadWriteMany volume (`shared_dir`, mounted at the same path in the step pod
and by the `dinoflow` training runtime), points the config there, and copies the outputs back
into its output artifacts when the job completes. The directory is keyed by pipeline run and
stage, so a retried step (preempted node) re-attaches to the same job and checkpoint directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dinoflow.config import save_config
from dinoflow.errors import DinoflowError
from dinoflow.launch.steps import step_config
from dinoflow.pipeline_env import pipeline_run_id
from dinoflow.launch.torchrun import TRAINING_STAGES, run_torchrun, stage_argv, torchrun_argv
from dinoflow.stages import run_stage

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# plain env forwarded from the step pod into TrainJob pods (never credentials: those go by secretKeyRef)
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
# credentials the TrainJob pods read from the same secrets as the pipeline steps (k8s/secrets.template.yaml)
SECRET_ENV = (
    ("AWS_ACCESS_KEY_ID", "dinoflow-s3", "AWS_ACCESS_KEY_ID"),
    ("AWS_SECRET_ACCESS_KEY", "dinoflow-s3", "AWS_SECRET_ACCESS_KEY"),
    ("MLFLOW_TRACKING_USERNAME", "dinoflow-mlflow", "MLFLOW_TRACKING_USERNAME"),
    ("MLFLOW_TRACKING_PASSWORD", "dinoflow-mlflow", "MLFLOW_TRACKING_PASSWORD"),
)


@dataclass
class LaunchOptions:
    """Resources for one training step (pipeline parameters)."""

    num_nodes: int = 1
    gpus_per_node: int = 0
    image: str = ""
    namespace: str = ""
    runtime: str = "torch-distributed"
    runtime_kind: str = "ClusterTrainingRuntime"
    shared_dir: str = "/mnt/dinoflow-shared"
    run_id: str = field(default_factory=lambda: pipeline_run_id() or "local")
    gpu_resource: str = "nvidia.com/gpu"  # the accelerator's extended resource name
    tolerations: Sequence[dict] = ()  # for the TrainJob's pods (multi-node)
    node_selector: dict = field(default_factory=dict)
    cpu_per_node: str = "8"
    memory_per_node: str = "32Gi"
    timeout_s: float = 7 * 24 * 3600.0
    poll_s: float = 15.0
    k8s_host: str | None = None
    secret_env: Sequence[tuple[str, str, str]] = field(default_factory=lambda: SECRET_ENV)

    def mode(self) -> str:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise DinoflowError(f"need num_nodes >= 1 and gpus_per_node >= 0; got {self.num_nodes}, {self.gpus_per_node}")
        if self.num_nodes > 1:
            return "trainjob"
        return "torchrun" if self.gpus_per_node > 1 else "in-process"


def _namespace(opts: LaunchOptions) -> str:
    if opts.namespace:
        return opts.namespace
    p = Path(SA_NAMESPACE_FILE)
    return p.read_text().strip() if p.exists() else "default"


def _copy(src: Path, dest: Path) -> None:
    if not src.exists():
        raise DinoflowError(f"{src} does not exist; the step cannot stage it")
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest) if src.is_dir() else shutil.copy2(src, dest)


def _slug(key: str) -> str:
    return key.replace(".", "_")


def run_training_step(
    stage: str,
    params_yaml: str,
    overrides: Sequence[str],
    *,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    opts: LaunchOptions,
) -> dict[str, Any]:
    """Run `stage` (pretrain / distill) with `inputs`/`outputs` mapping config keys to artifact paths."""
    if stage not in TRAINING_STAGES:
        raise DinoflowError(f"run_training_step runs {', '.join(TRAINING_STAGES)}, not {stage!r}")
    mode = opts.mode()
    wiring = {**inputs, **outputs}
    if mode == "in-process":
        summary = run_stage(stage, step_config(params_yaml, overrides, wiring)) or {}
        return {**summary, "launcher": mode}
    if mode == "torchrun":
        cfg = step_config(params_yaml, overrides, wiring)
        with tempfile.TemporaryDirectory(prefix="dinoflow-torchrun-") as tmp:
            cfg_path = Path(tmp) / "params.yaml"
            save_config(cfg, cfg_path)
            run_torchrun(torchrun_argv(stage, cfg_path, nproc_per_node=opts.gpus_per_node))
        return {"launcher": mode, "nproc_per_node": opts.gpus_per_node}
    return _run_trainjob(stage, params_yaml, overrides, inputs=inputs, outputs=outputs, opts=opts)


def _run_trainjob(stage: str, params_yaml: str, overrides: Sequence[str], *, inputs: Mapping[str, str],
                  outputs: Mapping[str, str], opts: LaunchOptions) -> dict[str, Any]:
    from dinoflow.launch.k8s import TrainJobClient, api_client
    from dinoflow.launch.trainjob import TrainJobRequest, build_trainjob, env_from_secret, env_value, job_name

    if not opts.image:
        raise DinoflowError("a multi-node TrainJob needs the training image; set the pipeline parameter `image`")
    name = job_name("dinoflow", opts.run_id, stage)
    root = Path(opts.shared_dir) / name
    if not Path(opts.shared_dir).is_dir():
        raise DinoflowError(
            f"shared volume {opts.shared_dir} is not mounted in this step; multi-node training needs the "
            "ReadWriteMany PVC `dinoflow-shared` (k8s/) mounted there"
        )
    wiring: dict[str, str] = {}
    for key, path in inputs.items():
        dest = root / "in" / _slug(key)
        _copy(Path(path), dest)
        wiring[key] = str(dest)
    for key in outputs:
        wiring[key] = str(root / "out" / _slug(key))
    cfg = step_config(params_yaml, overrides, wiring)
    save_config(cfg, root / "params.yaml")
    env = [env_value(k, os.environ[k]) for k in FORWARDED_ENV if os.environ.get(k)]
    env += [env_from_secret(var, secret, key) for var, secret, key in opts.secret_env]
    job = build_trainjob(TrainJobRequest(
        name=name, namespace=_namespace(opts), image=opts.image,
        command=["torchrun", *stage_argv(stage, root / "params.yaml")],
        num_nodes=opts.num_nodes, gpus_per_node=opts.gpus_per_node,
        cpu_per_node=opts.cpu_per_node, memory_per_node=opts.memory_per_node,
        runtime=opts.runtime, runtime_kind=opts.runtime_kind, env=env,
        labels={"dinoflow/stage": stage},
    ))
    client = TrainJobClient(job["metadata"]["namespace"], api_client(opts.k8s_host))
    state = client.run(job, timeout=opts.timeout_s, poll=opts.poll_s)
    for key, path in outputs.items():
        _copy(Path(wiring[key]), Path(path))
    return {"launcher": "trainjob", "trainjob": name, "num_nodes": opts.num_nodes,
            "gpus_per_node": opts.gpus_per_node, "state": state.phase}
