"""torchx component: the same torchrun entry (`-m dinoflow <stage>`) on any torchx scheduler.

    torchx run -s local_cwd dinoflow.launch.torchx_components:train --stage pretrain -j 1x2 \
        -- --set=pretrain.train.max_steps=2 --set=pretrain.train.device=cpu

On Kubernetes (torchx's `kubernetes` scheduler needs Volcano; the Kubeflow Trainer route of the
pipeline does not), run in the pipeline namespace of your k8s/ overlay, where the secrets and the
shared volume live, with the project's image as is (`--workspace ""`: no image rebuild):

    torchx run -s kubernetes -cfg queue=default,namespace=kubeflow --workspace "" \
        dinoflow.launch.torchx_components:train --stage pretrain -j 2x8 --gpu 8 \
        --image <training image> --config /app/params.yaml \
        --shared_pvc dinoflow-shared --workdir /mnt/dinoflow-shared/torchx \
        --tracking_uri http://dinoflow-mlflow.dinoflow.svc.cluster.local:5000 \
        --s3_endpoint_url http://dinoflow-minio.dinoflow.svc.cluster.local:9000 \
        --secrets dinoflow-s3,dinoflow-mlflow

The job runs in `<workdir>/<app id>` on the shared volume (the image's /app is read-only and a
pod's own disk dies with it), so relative paths of the config land there and a retried job finds
its checkpoints. Credentials: torchx's Kubernetes scheduler turns `env` into plain values (visible
to anyone who can read the Volcano job) and knows no secretKeyRef, so credentials never go
through `env`; the component adds the named secrets to the container through torchx's pod overlay
as `envFrom: secretRef` (values stay in the secrets). Pointing a job at cluster services without
`--secrets` is refused. The overlay finds the container by its image: with `--workspace` set,
torchx rebuilds the image under another name and the submission is rejected.

torchx rejects a repeated `-S` token even after `--`: pass overrides as distinct
`--set=key=value` tokens. torchx is an optional extra (`pip install -c constraints.txt
'dinoflow[torchx]'`); this module imports it lazily so the package works without it.
"""

import posixpath
import shlex
from typing import TYPE_CHECKING, Dict, Optional

from dinoflow.data.s3 import ENDPOINT_ENV as S3_ENDPOINT_ENV
from dinoflow.launch.images import TRAIN_IMAGE
from dinoflow.launch.shared import SHARED_DIR

if TYPE_CHECKING:  # torchx is an optional extra; the component imports it when called
    from torchx.specs import AppDef

DEFAULT_IMAGE = TRAIN_IMAGE
# non-root pod, as the k8s/ training runtime (the image's user)
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _nodes_and_procs(j: str) -> "tuple[int, int]":
    try:
        nodes, procs = (int(x) for x in j.lower().split("x"))
    except ValueError:
        raise ValueError(f"-j must look like NODESxPROCS (e.g. 1x2, 2x8); got {j!r}") from None
    if nodes < 1 or procs < 1:
        raise ValueError(f"-j needs at least 1 node and 1 process; got {j!r}")
    return nodes, procs


def _check_paths(config: str, workdir: str, shared_pvc: str) -> None:
    if workdir and not posixpath.isabs(workdir):
        raise ValueError(f"--workdir must be an absolute path on the shared volume, got {workdir!r}")
    if workdir and not posixpath.isabs(config):
        raise ValueError(f"with --workdir, --config must be absolute (e.g. /app/params.yaml), got {config!r}")
    if shared_pvc and workdir and not (workdir + "/").startswith(SHARED_DIR + "/"):
        raise ValueError(f"--workdir {workdir!r} is not on the shared volume mounted at {SHARED_DIR}")


def _service_env(tracking_uri: str, s3_endpoint_url: str, secrets: str) -> Dict[str, str]:
    """The non-secret settings as env; refuse cluster services without a credentials secret."""
    env: Dict[str, str] = {}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if s3_endpoint_url:
        env[S3_ENDPOINT_ENV] = s3_endpoint_url
    if env and not secrets:
        raise ValueError(
            "the job talks to cluster services but gets no credentials: pass --secrets "
            "dinoflow-s3,dinoflow-mlflow (torchx cannot pass secretKeyRef; never put keys in --env)"
        )
    return env


def _pod_overlay(image: str, secrets: str) -> dict:
    """torchx pod overlay: the secrets as envFrom on the trainer container (matched by image)."""
    from torchx.specs.overlays import JOIN

    env_from = [{"secretRef": {"name": s.strip()}} for s in secrets.split(",") if s.strip()]
    spec: dict = {"securityContext": dict(POD_SECURITY)}
    if env_from:
        spec[JOIN("containers", on="image")] = [{"image": image, "envFrom": env_from}]
    return {"spec": spec}


def train(
    *stage_args: str,
    stage: str = "pretrain",
    config: str = "params.yaml",
    image: str = DEFAULT_IMAGE,
    j: str = "1x2",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    rdzv_port: int = 29500,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    workdir: str = "",
    shared_pvc: str = "",
    tracking_uri: str = "",
    s3_endpoint_url: str = "",
    secrets: str = "",
) -> "AppDef":
    """Run a dinoflow training stage under torchrun (one role, `nodes` replicas).

    Args:
        stage_args: extra CLI arguments for the stage, e.g. `-S pretrain.train.max_steps=2`
        stage: pretrain or distill
        config: params file (absolute when --workdir is set, e.g. the image's /app/params.yaml)
        image: container image (ignored by local_cwd)
        j: NODESxPROCS_PER_NODE, e.g. 1x2 or 2x8
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        rdzv_port: port of the c10d rendezvous on the first node (multi-node only)
        max_retries: scheduler retries (the stage resumes from its checkpoint)
        env: extra environment variables (plain values: never credentials)
        workdir: absolute directory the job runs in, as <workdir>/<app id> (created)
        shared_pvc: a ReadWriteMany PVC to mount at /mnt/dinoflow-shared (e.g. dinoflow-shared)
        tracking_uri: MLFLOW_TRACKING_URI for the job
        s3_endpoint_url: the data store's endpoint for the job (DINOFLOW_S3_ENDPOINT_URL)
        secrets: comma-separated Kubernetes secrets whose keys become env (envFrom), e.g. dinoflow-s3,dinoflow-mlflow
    """
    import torchx.specs as specs
    from torchx.specs import macros
    from torchx.specs.overlays import set_overlay

    if stage not in ("pretrain", "distill"):
        raise ValueError(f"stage must be pretrain or distill, got {stage!r}")
    nodes, procs = _nodes_and_procs(j)
    _check_paths(config, workdir, shared_pvc)
    service_env = _service_env(tracking_uri, s3_endpoint_url, secrets)
    # one node: torchrun picks a free port itself; several: rendezvous on the first replica,
    # whose host the scheduler exports ($$ escapes torchx macro substitution; bash expands it)
    endpoint = "localhost:0" if nodes == 1 else f"$${{{macros.rank0_env}:=localhost}}:{rdzv_port}"
    cmd = [
        "torchrun",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        macros.app_id,
        "--nnodes",
        str(nodes),
        "--nproc_per_node",
        str(procs),
        "-m",
        "dinoflow",
        stage,
        "-c",
        config,
        *stage_args,
    ]
    # quote everything except the endpoint, which the shell must expand
    script = " ".join(c if c == endpoint else shlex.quote(c) for c in cmd)
    if workdir:
        run_dir = shlex.quote(posixpath.join(workdir, macros.app_id))
        script = f"mkdir -p {run_dir} && cd {run_dir} && exec {script}"
    mounts = [specs.VolumeMount(src=shared_pvc, dst_path=SHARED_DIR)] if shared_pvc else []
    role = specs.Role(
        name=stage,
        image=image,
        entrypoint="bash",
        args=["-c", script],
        num_replicas=nodes,
        resource=specs.Resource(cpu=cpu, gpu=gpu, memMB=memMB),
        env={"LOGLEVEL": "WARNING", "HOME": "/tmp", **service_env, **(env or {})},
        port_map={"c10d": rdzv_port},
        max_retries=max_retries,
        mounts=mounts,
    )
    set_overlay(role, "kubernetes", "V1Pod", _pod_overlay(image, secrets))
    return specs.AppDef(name=f"dinoflow-{stage}", roles=[role])
