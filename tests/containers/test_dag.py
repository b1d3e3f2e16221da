"""The whole DAG through kfp.local's DockerRunner in the project's image: every step as uid 10001
with a read-only root filesystem, tracking to the MLflow server above by its in-cluster name.

The data lies on a read-only mount (the cluster's volume), the shared volume is a writable mount at
its cluster path, and the pipeline run id reaches the steps as the pod label does on a cluster.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from containers.engine import scratch_dir
from pipelines.cli import run_local

pytestmark = [pytest.mark.slow, pytest.mark.containers]

ROOT = Path(__file__).resolve().parents[2]
DATA = "/data/demo"
SHARED = "/mnt/dinoflow-shared"
TINY = [
    "pretrain.train.max_steps=3", "pretrain.train.batch_size_per_rank=32", "pretrain.train.progress=false",
    "distill.train.max_steps=3", "distill.train.batch_size_per_rank=32", "distill.train.progress=false",
    "evaluate.max_train=150", "evaluate.max_test=50", "evaluate.linear_epochs=1", "evaluate.linear_lrs=[0.1]",
    "evaluate.logreg_cs=[1.0]", "evaluate.logreg_max_iter=50", "evaluate.n_pca_images=0", "evaluate.progress=false",
    "tracking.system_metrics=false",
]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """The demo pool, built on the host and mounted read-only into the steps."""
    from dinoflow.config import load_config
    from dinoflow.stages import run_stage

    out = tmp_path_factory.mktemp("demo") / "demo"
    run_stage("demo-data", load_config(ROOT / "params.yaml", [f"demo.out_dir={out}", "tracking.enabled=false"]))
    return out


def cluster_params(tmp: Path) -> Path:
    """The demo's params with every path absolute, as on a cluster (pipelines/params.cluster.example.yaml)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["curate"].update(sources=[f"{DATA}/pool"], seeds=f"{DATA}/seeds", eval_sets=[f"{DATA}/eval"])
    params.setdefault("evaluate", {})["demo_dir"] = DATA
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def docker_runner(cluster, demo: Path, shared: Path, run_id: str, **extra):
    from docker.types import Mount
    from kfp import local

    return local.DockerRunner(
        **cluster.pod.restricted(),
        environment=cluster.step_env(DINOFLOW_PIPELINE_RUN_ID=run_id),
        mounts=[Mount(DATA, str(demo), type="bind", read_only=True), Mount(SHARED, str(shared), type="bind")],
        **extra,
    )


def _task_dirs(run: Path):
    """kfp.local's task directories of one run; a ParallelFor iteration's directory holds its tasks'."""
    for p in (p for p in run.iterdir() if p.is_dir()):
        if p.name.startswith("for-loop-"):
            yield from (q for q in p.iterdir() if q.is_dir())
        else:
            yield p


def test_the_dag_runs_in_restricted_containers_and_tracks_to_the_cluster_server(cluster, demo_data, tmp_path):
    run_id = f"kfp-{uuid.uuid4().hex[:10]}"
    root, shared = scratch_dir("dinoflow-kfp-root-"), scratch_dir("dinoflow-shared-")
    out = run_local(str(cluster_params(tmp_path)), TINY, pipeline_root=str(root), demo=False,
                    runner=docker_runner(cluster, demo_data, shared, run_id), run_id=run_id)
    runs = Path(out["pipeline_root"])
    (registry,) = runs.rglob("register/registry")
    rec = json.loads(registry.read_text())
    assert rec["registered"] is True and rec["version"]

    # nothing but declared outputs under the pipeline root (the root filesystem was read-only)
    declared = {"curated", "reports", "report_html", "metrics", "teacher", "curves", "student", "report_md", "registry",
                "embeddings"}
    task_dirs = list(_task_dirs(next(runs.iterdir())))
    for task_dir in task_dirs:
        assert {p.name for p in task_dir.iterdir()} <= declared | {"executor_output.json"}, task_dir
    assert sum(d.name == "curate-partition" for d in task_dirs) >= 2, "curate ran as the fan-out"

    code, text = cluster.python(f"""
import json, mlflow
c = mlflow.MlflowClient()
exp = c.get_experiment_by_name("dinoflow").experiment_id
runs = c.search_runs([exp], filter_string="tags.`dinoflow.pipeline_run_id` = '{run_id}'")
print(json.dumps([{{"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags}} for r in runs]))
""", env=cluster.step_env())
    assert code == 0, text[-3000:]
    found = json.loads(text.strip().splitlines()[-1])
    stages = {r["tags"].get("dinoflow.stage"): r for r in found if "dinoflow.stage" in r["tags"]}
    assert set(stages) == {"curate", "pretrain", "distill", "evaluate", "register"}
    parents = {r["tags"]["mlflow.parentRunId"] for r in stages.values()}
    (parent,) = [r for r in found if r["tags"].get("dinoflow.role") == "pipeline"]
    assert parents == {parent["id"]} and parent["status"] == "FINISHED"
    assert all(r["status"] == "FINISHED" for r in stages.values())
    assert all(r["tags"]["mlflow.source.git.commit"] not in ("", "unknown") for r in stages.values())
