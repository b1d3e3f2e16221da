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

from containers.steps import cluster_params, docker_runner
from pipelines.cli import run_local

pytestmark = [pytest.mark.slow, pytest.mark.containers]

TINY = [
    "pretrain.train.max_steps=3",
    "pretrain.train.batch_size_per_rank=32",
    "pretrain.train.progress=false",
    "distill.train.max_steps=3",
    "distill.train.batch_size_per_rank=32",
    "distill.train.progress=false",
    "evaluate.max_train=150",
    "evaluate.max_test=50",
    "evaluate.linear_epochs=1",
    "evaluate.linear_lrs=[0.1]",
    "evaluate.logreg_cs=[1.0]",
    "evaluate.logreg_max_iter=50",
    "evaluate.n_pca_images=0",
    "evaluate.progress=false",
    "tracking.system_metrics=false",
]


def declared_outputs() -> set[str]:
    """Every output artifact name any component of the DAG declares (read from the pipeline spec,
    so the check follows the DAG's shape: one curate step or a fan-out)."""
    from pipelines.cli import load_pipeline

    spec = load_pipeline().pipeline_spec
    return {name for comp in spec.components.values() for name in comp.output_definitions.artifacts}


def assert_only_declared_outputs(pipeline_root: Path) -> None:
    """Under kfp.local's pipeline root each step writes `<task dir>/executor_output.json` and its
    declared outputs, nothing else (anything more would come from a step writing where it should
    not); task dirs may nest (loop iterations), so they are found by their executor output."""
    declared = declared_outputs() | {"executor_output.json"}
    task_dirs = {p.parent for p in pipeline_root.rglob("executor_output.json")}
    assert task_dirs, f"no step wrote its executor output under {pipeline_root}"
    for task_dir in task_dirs:
        assert {p.name for p in task_dir.iterdir()} <= declared, task_dir
    stray = [f for f in pipeline_root.rglob("*") if f.is_file() and not any(d in f.parents for d in task_dirs)]
    assert not stray, f"files outside every step's outputs: {stray[:10]}"


def test_the_dag_runs_in_restricted_containers_and_tracks_to_the_cluster_server(cluster, demo_data, tmp_path, scratch):
    run_id = f"kfp-{uuid.uuid4().hex[:10]}"
    root, shared = scratch("dinoflow-kfp-root-"), scratch("dinoflow-shared-")
    out = run_local(
        str(cluster_params(tmp_path)),
        TINY,
        pipeline_root=str(root),
        demo=False,
        runner=docker_runner(cluster, demo_data, shared, run_id),
        run_id=run_id,
    )
    runs = Path(out["pipeline_root"])
    (registry,) = runs.rglob("register/registry")
    rec = json.loads(registry.read_text())
    assert rec["registered"] is True and rec["version"]

    assert_only_declared_outputs(runs)
    partitions = [p for p in runs.rglob("executor_output.json") if p.parent.name == "curate-partition"]
    assert len(partitions) >= 2, "curate ran as the fan-out"

    code, text = cluster.python(
        f"""
import json, mlflow
c = mlflow.MlflowClient()
exp = c.get_experiment_by_name("dinoflow").experiment_id
runs = c.search_runs([exp], filter_string="tags.`dinoflow.pipeline_run_id` = '{run_id}'")
print(json.dumps([{{"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags}} for r in runs]))
""",
        env=cluster.step_env(),
    )
    assert code == 0, text[-3000:]
    found = json.loads(text.strip().splitlines()[-1])
    stages = {r["tags"].get("dinoflow.stage"): r for r in found if "dinoflow.stage" in r["tags"]}
    # curation may run as one step or fanned out (its stage names then differ); the rest are fixed
    assert {"pretrain", "distill", "evaluate", "register"} <= set(stages) and any(
        s.startswith("curate") for s in stages
    )
    parents = {r["tags"]["mlflow.parentRunId"] for r in stages.values()}
    (parent,) = [r for r in found if r["tags"].get("dinoflow.role") == "pipeline"]
    assert parents == {parent["id"]} and parent["status"] == "FINISHED"
    assert all(r["status"] == "FINISHED" for r in stages.values())
    assert all(r["tags"]["mlflow.source.git.commit"] not in ("", "unknown") for r in stages.values())
