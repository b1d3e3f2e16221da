"""One training step, three ways, chosen by the resources it is given:

- `num_nodes == 1` and at most one GPU: the stage function runs in this process;
- `num_nodes == 1` and N > 1 GPUs: `torchrun --nproc-per-node=N -m dinoflow <stage>` in this pod;
- `num_nodes > 1`: a Kubeflow Trainer `TrainJob` that this step submits and waits for.

Durable state lives on the shared ReadWriteMany volume when it is mounted (`shared_dir`, see
dinoflow.launch.shared): in every mode the stage's checkpoints go to
`<shared_dir>/<run id>/<stage>/ckpt` (pretrain, distill; curate has none: it resumes from the
embedding shards it is given), so a retried step (preempted node) resumes instead of starting
over; step output paths are pod-local and start empty on a retry. TrainJob pods do not see the
step pod's artifact paths, so in that mode the step also stages its inputs there, the job writes
its outputs there, and the step copies them into its output artifacts when the job completes.
The run id comes from the environment (`DINOFLOW_PIPELINE_RUN_ID`, filled by the DAG from the pod
label `pipeline/runid`), not from a component input, so caching still works.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from dinoflow.config import save_config
from dinoflow.config.pipeline_env import kfp_pod
from dinoflow.data.s3 import ENDPOINT_ENV, REGION_ENV
from dinoflow.errors import DinoflowError
from dinoflow.launch import shared
from dinoflow.launch.cuda_check import check_this_node
from dinoflow.launch.data_ref import on_volume
from dinoflow.launch.k8s import TrainJobClient, api_client
from dinoflow.launch.k8s_labels import PULL_SECRETS_ENV
from dinoflow.launch.options import LaunchOptions
from dinoflow.launch.steps import step_config
from dinoflow.launch.torchrun import TRAINING_STAGES, run_torchrun, stage_argv, torchrun_argv
from dinoflow.launch.trainjob import (
    TrainJobRequest,
    build_trainjob,
    env_from_secret,
    env_value,
    job_name,
    owner_reference,
)
from dinoflow.stages import run_stage

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEADLINE_GRACE_S = 300.0  # the step waits this much past the job's deadline for the controller's verdict
# plain env forwarded from the step pod into TrainJob pods (never credentials: those go by secretKeyRef)
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", ENDPOINT_ENV, REGION_ENV)


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


def _stage_input(src: Path, dest: Path) -> None:
    """Copy an input once per run: a retried step must not rewrite files a running job reads."""
    marker = dest.parent / f".{dest.name}.staged"
    if marker.exists() and dest.exists():
        return
    tmp = dest.parent / f".{dest.name}.partial"
    _copy(src, tmp)
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    tmp.rename(dest)
    marker.touch()


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
    if mode != "trainjob" and opts.gpus_per_node > 0:  # this pod trains on GPUs: can its driver run them?
        check_this_node()
    if mode == "trainjob":
        return _run_trainjob(stage, params_yaml, overrides, inputs=inputs, outputs=outputs, opts=opts)
    wiring: dict[str, Any] = {**inputs, **outputs}
    root = None
    if opts.run_id and shared.is_mounted(opts.shared_dir):
        root = shared.stage_dir(opts.shared_dir, opts.run_id, stage)
        wiring.update(shared.checkpoint_wiring(stage, root))
    cfg = step_config(params_yaml, overrides, wiring)
    if mode == "in-process":
        summary = {**(run_stage(stage, cfg) or {}), "launcher": mode}
    else:
        with tempfile.TemporaryDirectory(prefix="dinoflow-torchrun-") as tmp:
            cfg_path = Path(tmp) / "params.yaml"
            save_config(cfg, cfg_path)
            run_torchrun(torchrun_argv(stage, cfg_path, nproc_per_node=opts.gpus_per_node))
        summary = {"launcher": mode, "nproc_per_node": opts.gpus_per_node}
    if root is not None:  # the outputs are in the artifacts now; the checkpoints served their purpose
        shared.clean(root)
    return summary


def pull_secrets() -> list[str]:
    """The image pull secrets the compiled pipeline gave this step (`dinoflow pipeline compile
    --image-pull-secret`), for the TrainJob's node pods: they pull the same private images."""
    return [s.strip() for s in os.environ.get(PULL_SECRETS_ENV, "").split(",") if s.strip()]


def _run_trainjob(
    stage: str,
    params_yaml: str,
    overrides: Sequence[str],
    *,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    opts: LaunchOptions,
) -> dict[str, Any]:
    if not opts.image:
        raise DinoflowError("a multi-node TrainJob needs the training image; set the pipeline parameter `image`")
    run_id = shared.require_run_id(opts.run_id, f"multi-node {stage}")
    if not shared.is_mounted(opts.shared_dir):
        raise DinoflowError(
            f"shared volume {opts.shared_dir} is not mounted in this step; multi-node training needs the "
            "ReadWriteMany PVC `dinoflow-shared` (k8s/) mounted there"
        )
    root = shared.stage_dir(opts.shared_dir, run_id, stage)
    wiring: dict[str, str] = {}
    for key, path in inputs.items():
        if on_volume(path, opts.shared_dir):  # the job's pods read it where it is (dinoflow.launch.data_ref)
            wiring[key] = str(path)
            continue
        dest = root / "in" / _slug(key)
        _stage_input(Path(path), dest)
        wiring[key] = str(dest)
    for key in outputs:
        wiring[key] = str(root / "out" / _slug(key))
    cfg = step_config(params_yaml, overrides, wiring)
    save_config(cfg, root / "params.yaml")
    env = [env_value(k, os.environ[k]) for k in FORWARDED_ENV if os.environ.get(k)]
    env += [env_from_secret(var, secret, key) for var, secret, key in opts.secret_env]
    pod = kfp_pod()
    if pod is None:
        log.warning(
            "not in a KFP step pod (KFP_POD_NAME/KFP_POD_UID unset): the TrainJob gets no owner and "
            "outlives a cancelled run until its deadline"
        )
    job = build_trainjob(
        TrainJobRequest(
            name=job_name(stage, run_id),
            namespace=_namespace(opts),
            image=opts.image,
            command=["torchrun", *stage_argv(stage, root / "params.yaml")],
            num_nodes=opts.num_nodes,
            gpus_per_node=opts.gpus_per_node,
            cpu_per_node=opts.cpu_per_node,
            memory_per_node=opts.memory_per_node,
            shm_per_node=opts.shm_per_node,
            queue_name=opts.queue_name,
            runtime=opts.runtime,
            runtime_kind=opts.runtime_kind,
            env=env,
            labels={"dinoflow/stage": stage},
            gpu_resource=opts.gpu_resource,
            tolerations=[dict(t) for t in opts.tolerations],
            node_selector=dict(opts.node_selector),
            owner=owner_reference(*pod) if pod else None,
            active_deadline_seconds=max(1, int(opts.timeout_s)),
            image_pull_secrets=pull_secrets(),
        )
    )
    name = job["metadata"]["name"]
    client = TrainJobClient(job["metadata"]["namespace"], api_client(opts.k8s_host))
    state = client.run(
        job,
        timeout=opts.timeout_s + DEADLINE_GRACE_S,
        poll=opts.poll_s,
        follow_logs=opts.stream_logs,
        pending_timeout=opts.pending_timeout_s or None,
    )
    for key, path in outputs.items():
        _copy(Path(wiring[key]), Path(path))
    shared.clean(root)
    return {
        "launcher": "trainjob",
        "trainjob": name,
        "num_nodes": opts.num_nodes,
        "gpus_per_node": opts.gpus_per_node,
        "state": state.phase,
    }
