"""A pretrain step killed (SIGKILL, as a preempted node) inside its container resumes from its
checkpoint on the shared volume when the step is retried with the same pipeline run id, and ends
with the same teacher, bit for bit, as an uninterrupted run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from kfp import dsl

from components.pretrain.component import pretrain
from containers.engine import scratch_dir
from containers.test_dag import SHARED, cluster_params, demo_data, docker_runner  # noqa: F401 - fixture
from dinoflow.config import load_config
from dinoflow.stages import run_stage

pytestmark = [pytest.mark.slow, pytest.mark.containers]

STEPS = ["pretrain.train.max_steps=40", "pretrain.train.checkpoint_every=10", "pretrain.train.progress=false",
         "pretrain.train.batch_size_per_rank=32", "tracking.enabled=false"]


def _probe(curated_uri: str):
    @dsl.pipeline(name="resume-probe")
    def resume_probe(params_yaml: str, overrides: list):
        data = dsl.importer(artifact_uri=curated_uri, artifact_class=dsl.Dataset, reimport=False)
        pretrain(params_yaml=params_yaml, overrides=overrides, curated=data.output, num_nodes=1, gpus_per_node=0,
                 accelerator_type="nvidia.com/gpu", image="", trainjob_runtime="", trainjob_runtime_kind="TrainingRuntime",
                 shared_dir=SHARED, tolerations=[], node_selector={})
    return resume_probe


def _run(cluster, demo, shared, root, run_id, params_text, curated, *, kill_after_checkpoint=False):
    """Run the probe pipeline; optionally SIGKILL the pretrain container once a checkpoint exists."""
    from kfp import local

    local.init(runner=docker_runner(cluster, demo, shared, run_id, labels={"dinoflow-test": cluster.pod.id,
                                                                          "dinoflow-probe": run_id}),
               pipeline_root=str(root), raise_on_error=False)
    outcome: dict = {}

    def go():
        outcome["task"] = _probe(str(curated))(params_yaml=params_text, overrides=STEPS)

    worker = threading.Thread(target=go)
    worker.start()
    if kill_after_checkpoint:
        ckpt_root = shared / run_id / "pretrain"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not list(ckpt_root.rglob("step_*")):
            time.sleep(0.5)
        assert list(ckpt_root.rglob("step_*")), f"no checkpoint appeared under {ckpt_root}"
        time.sleep(3)  # let it train past the checkpoint: those steps are lost and recomputed
        (container,) = cluster.pod.client.containers.list(filters={"label": f"dinoflow-probe={run_id}"})
        container.kill(signal="SIGKILL")
    worker.join(timeout=900)
    assert not worker.is_alive()
    return outcome.get("task")


def _teacher(root: Path, run_id_marker: str) -> dict[str, torch.Tensor]:
    (path,) = [p for p in root.rglob("teacher/backbone.pth")]
    return torch.load(path, weights_only=True, map_location="cpu")


def test_killed_pretrain_step_resumes_on_retry_and_matches_an_uninterrupted_run(cluster, demo_data, tmp_path):
    params = cluster_params(tmp_path)
    shared = scratch_dir("dinoflow-shared-")
    # the curated shards, made once on the host onto the shared volume; the probe imports them from
    # the path the step containers see, like an upstream step's artifact
    cfg = load_config(params, [f"curate.sources=[{demo_data}/pool]", f"curate.seeds={demo_data}/seeds",
                               f"curate.eval_sets=[{demo_data}/eval]", f"curate.out_dir={shared}/curated",
                               f"curate.report_dir={shared}/curation-reports", "tracking.enabled=false"])
    run_stage("curate", cfg)
    text = params.read_text()
    curated = f"{SHARED}/curated"

    interrupted, retried, straight = (scratch_dir(f"dinoflow-{n}-") for n in ("killed", "retry", "straight"))
    _run(cluster, demo_data, shared, interrupted, "run-a", text, curated, kill_after_checkpoint=True)
    assert not list(interrupted.rglob("teacher/backbone.pth")), "the killed step must not have finished"
    checkpoints = sorted(p.name for p in (shared / "run-a" / "pretrain").rglob("step_*"))
    assert checkpoints, "the durable checkpoint survives the killed pod"

    _run(cluster, demo_data, shared, retried, "run-a", text, curated)
    _run(cluster, demo_data, shared, straight, "run-b", text, curated)
    resumed, reference = _teacher(retried, "run-a"), _teacher(straight, "run-b")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), "resume must be exact"
    assert yaml.safe_load((next(retried.rglob("teacher/config.yaml"))).read_text())["pretrain"]["train"]["max_steps"] == 40
