"""How the tier runs pipeline steps: kfp.local's DockerRunner set up as a restricted pod in the
tier's network namespace, with the data on a read-only mount at a cluster path, the shared volume
writable at its cluster path, and the run id given as the pod label gives it on a cluster."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = "/data/demo"  # where the steps see the demo data (a volume on a cluster)
SHARED = "/mnt/dinoflow-shared"  # dinoflow.launch.shared.SHARED_DIR: the ReadWriteMany claim's mount


def cluster_params(tmp: Path) -> Path:
    """The demo's params with every path absolute, as on a cluster (pipelines/params.cluster.example.yaml)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["curate"].update(sources=[f"{DATA}/pool"], seeds=f"{DATA}/seeds", eval_sets=[f"{DATA}/eval"])
    params.setdefault("evaluate", {})["demo_dir"] = DATA
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def docker_runner(cluster, demo: Path, shared: Path, run_id: str, labels: dict[str, str] | None = None):
    """kfp.local's DockerRunner with the restricted pod's settings; `labels` are added to the pod's."""
    from docker.types import Mount
    from kfp import local

    opts = cluster.pod.restricted()
    opts["labels"] = {**opts["labels"], **(labels or {})}
    return local.DockerRunner(
        **opts,
        environment=cluster.step_env(DINOFLOW_PIPELINE_RUN_ID=run_id),
        mounts=[Mount(DATA, str(demo), type="bind", read_only=True), Mount(SHARED, str(shared), type="bind")],
    )
