"""The resources of one launched step (pretrain, distill, the curation's global step), and the one
structured pipeline parameter they arrive in.

A Kubeflow component takes them as a single `launch` dict (KFP `STRUCT`): the DAG's
`launch_options` task builds it from the pipeline parameters (`num_nodes`, `gpus_per_node`,
`accelerator_type`, `gpu_tolerations`, ...) and checks it before any work starts; the step checks
it again (`LaunchOptions.from_launch`), since a component can be called with any dict. Its keys are
`LAUNCH_KEYS` (the pipeline's names); an unknown key or a value of the wrong type or range is a
DinoflowError naming the key and what it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from dinoflow.config.base import short_repr
from dinoflow.config.pipeline_env import pipeline_run_id
from dinoflow.errors import DinoflowError
from dinoflow.launch import shared
from dinoflow.launch.secrets import CREDENTIAL_KEYS
from dinoflow.launch.trainjob import DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND

PENDING_TIMEOUT_S = 3600.0  # default: an hour without a started node pod is a placement problem, not a queue
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
# credentials the TrainJob pods read from the same secrets as the pipeline steps (k8s/base/pipeline/secrets.template.yaml)
SECRET_ENV = tuple((key, secret, key) for secret, keys in CREDENTIAL_KEYS.items() for key in keys)


@dataclass
class LaunchOptions:
    """Resources for one training step (pipeline parameters)."""

    num_nodes: int = 1
    gpus_per_node: int = 0
    image: str = ""
    namespace: str = ""
    runtime: str = DEFAULT_RUNTIME
    runtime_kind: str = DEFAULT_RUNTIME_KIND
    shared_dir: str = shared.SHARED_DIR
    run_id: str | None = field(default_factory=pipeline_run_id)
    cpu_per_node: str = ""  # TrainJob node pods; "" = in proportion to gpus_per_node (trainjob.node_resources)
    memory_per_node: str = ""  # likewise; /dev/shm is sized inside it
    shm_per_node: str = ""  # "" = a quarter of memory_per_node
    queue_name: str = ""  # Kueue LocalQueue for the TrainJob; "" = none
    # no node pod started within this: fail the step with the scheduler's and queue's events (0 = wait
    # up to timeout_s; raise it where a Kueue queue may hold a job for hours)
    pending_timeout_s: float = PENDING_TIMEOUT_S
    timeout_s: float = 7 * 24 * 3600.0  # also the TrainJob's activeDeadlineSeconds
    poll_s: float = 15.0
    k8s_host: str | None = None
    secret_env: Sequence[tuple[str, str, str]] = field(default_factory=lambda: SECRET_ENV)
    gpu_resource: str = DEFAULT_ACCELERATOR  # the accelerator's extended resource name (KFP accelerator_type)
    tolerations: Sequence[Mapping[str, Any]] = ()  # TrainJob node pods (GPU taints)
    node_selector: Mapping[str, str] = field(default_factory=dict)  # TrainJob node pods (GPU pool)
    stream_logs: bool = True

    @classmethod
    def from_launch(cls, launch: Any) -> "LaunchOptions":
        """The options from a component's `launch` dict (see `check_launch`); the run id comes from
        the pod's label, not the dict, so the step stays cacheable."""
        rec = _record(launch)
        return cls(
            num_nodes=rec.num_nodes,
            gpus_per_node=rec.gpus_per_node,
            gpu_resource=rec.accelerator_type,
            image=rec.image,
            runtime=rec.trainjob_runtime,
            runtime_kind=rec.trainjob_runtime_kind,
            shared_dir=rec.shared_dir,
            tolerations=rec.tolerations,
            node_selector=rec.node_selector,
            cpu_per_node=rec.cpu_per_node,
            memory_per_node=rec.memory_per_node,
            shm_per_node=rec.shm_per_node,
            queue_name=rec.queue_name,
            pending_timeout_s=rec.pending_timeout_s,
        )

    def mode(self) -> str:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise DinoflowError(
                f"need num_nodes >= 1 and gpus_per_node >= 0; got {self.num_nodes}, {self.gpus_per_node}"
            )
        if self.num_nodes > 1:
            return "trainjob"
        return "torchrun" if self.gpus_per_node > 1 else "in-process"


def _whole(value: Any) -> Any:
    # YAML/JSON `true` and "2" are not counts; a whole float is (a KFP struct's numbers are doubles)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number")
    return value


Count = Annotated[int, BeforeValidator(_whole)]


class _LaunchRecord(BaseModel):
    """The `launch` dict: every key optional, defaults as LaunchOptions'."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)

    num_nodes: Annotated[Count, Field(ge=1)] = 1
    gpus_per_node: Annotated[Count, Field(ge=0)] = 0  # processes per node for the curation's global step
    accelerator_type: str = DEFAULT_ACCELERATOR
    image: str = ""
    trainjob_runtime: str = DEFAULT_RUNTIME
    trainjob_runtime_kind: str = DEFAULT_RUNTIME_KIND
    shared_dir: str = shared.SHARED_DIR
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    cpu_per_node: str = ""
    memory_per_node: str = ""
    shm_per_node: str = ""
    queue_name: str = ""
    pending_timeout_s: Annotated[float, Field(ge=0)] = PENDING_TIMEOUT_S


LAUNCH_KEYS = tuple(_LaunchRecord.model_fields)


def _record(launch: Any) -> _LaunchRecord:
    if not isinstance(launch, Mapping):
        raise DinoflowError(
            f"launch options must be a mapping of {', '.join(LAUNCH_KEYS)}; got a {type(launch).__name__}"
        )
    try:
        return _LaunchRecord.model_validate(dict(launch))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"launch.{loc}: unknown key")
            else:
                problems.append(
                    f"launch.{loc}: {str(err['msg']).removeprefix('Value error, ')}; got {short_repr(err['input'])}"
                )
        raise DinoflowError(
            "invalid launch options: " + "; ".join(problems[:10]) + f" (the keys: {', '.join(LAUNCH_KEYS)})"
        ) from None


def check_launch(launch: Any) -> dict[str, Any]:
    """The `launch` dict checked and completed with the defaults (what the DAG passes to the steps),
    or DinoflowError naming each unknown key and bad value."""
    return _record(launch).model_dump()
