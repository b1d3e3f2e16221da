"""torchx component: the same torchrun entry (`-m dinoflow <stage>`) on any torchx scheduler.

    torchx run -s local_cwd dinoflow.launch.torchx_components:train --stage pretrain -j 1x2 \
        -- --set=pretrain.train.max_steps=2 --set=pretrain.train.device=cpu
    torchx run -s kubernetes -cfg queue=default,namespace=kubeflow \
        dinoflow.launch.torchx_components:train --stage pretrain -j 2x8 --gpu 8 --image <training image>

torchx rejects a repeated `-S` token even after `--`: pass overrides as distinct
`--set=key=value` tokens. `.torchxconfig` in the repo root holds the defaults. torchx is an optional extra
(`pip install -c constraints.txt 'dinoflow[torchx]'`); this module imports it lazily so the
package works without it.
"""

import shlex
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:  # torchx is an optional extra; the component imports it when called
    from torchx.specs import AppDef

DEFAULT_IMAGE = "dinoflow/dinoflow-cuda:0.1.0"


def _nodes_and_procs(j: str) -> "tuple[int, int]":
    try:
        nodes, procs = (int(x) for x in j.lower().split("x"))
    except ValueError:
        raise ValueError(f"-j must look like NODESxPROCS (e.g. 1x2, 2x8); got {j!r}") from None
    if nodes < 1 or procs < 1:
        raise ValueError(f"-j needs at least 1 node and 1 process; got {j!r}")
    return nodes, procs


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
) -> "AppDef":
    """Run a dinoflow training stage under torchrun (one role, `nodes` replicas).

    Args:
        stage_args: extra CLI arguments for the stage, e.g. `-S pretrain.train.max_steps=2`
        stage: pretrain or distill
        config: params file, relative to the working directory of the job
        image: container image (ignored by local_cwd)
        j: NODESxPROCS_PER_NODE, e.g. 1x2 or 2x8
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        rdzv_port: port of the c10d rendezvous on the first node (multi-node only)
        max_retries: scheduler retries (the stage resumes from its checkpoint)
        env: extra environment variables
    """
    import torchx.specs as specs
    from torchx.specs import macros

    if stage not in ("pretrain", "distill"):
        raise ValueError(f"stage must be pretrain or distill, got {stage!r}")
    nodes, procs = _nodes_and_procs(j)
    # one node: torchrun picks a free port itself; several: rendezvous on the first replica,
    # whose host the scheduler exports ($$ escapes torchx macro substitution; bash expands it)
    endpoint = "localhost:0" if nodes == 1 else f"$${{{macros.rank0_env}:=localhost}}:{rdzv_port}"
    cmd = [
        "torchrun", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
        "--rdzv_id", macros.app_id, "--nnodes", str(nodes), "--nproc_per_node", str(procs),
        "-m", "dinoflow", stage, "-c", config, *stage_args,
    ]
    # quote everything except the endpoint, which the shell must expand
    script = " ".join(c if c == endpoint else shlex.quote(c) for c in cmd)
    return specs.AppDef(
        name=f"dinoflow-{stage}",
        roles=[
            specs.Role(
                name=stage,
                image=image,
                entrypoint="bash",
                args=["-c", script],
                num_replicas=nodes,
                resource=specs.Resource(cpu=cpu, gpu=gpu, memMB=memMB),
                env={"LOGLEVEL": "WARNING", **(env or {})},
                port_map={"c10d": rdzv_port},
                max_retries=max_retries,
            )
        ],
    )
