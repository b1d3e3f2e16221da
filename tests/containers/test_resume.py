"""A pretrain step killed (SIGKILL, as a preempted node) inside its container resumes from its
checkpoint on the shared volume when the step is retried with the same pipeline run id, and ends
with the same teacher, bit for bit, as an uninterrupted run."""

# no `from __future__ import annotations` here: KFP reads the probe pipeline's annotations as
# types, and postponed (string) annotations make it take `str` for an artifact type name

import csv
import threading
import time
from pathlib import Path
from typing import List

import pytest
import torch
from kfp import dsl

from components.pretrain.component import pretrain
from containers.steps import SHARED, cluster_params, docker_runner
from dinoflow.config import load_config
from dinoflow.stages import run_stage

pytestmark = [pytest.mark.slow, pytest.mark.containers]

# small enough for three short runs on two CPU cores; the kill lands right after the first published
# checkpoint, so the retry must restore weights, optimiser, objective state and data position to
# match. The steps after it leave the kill a margin of seconds on a fast machine.
MAX_STEPS = 40
STEPS = [
    f"pretrain.train.max_steps={MAX_STEPS}",
    "pretrain.train.checkpoint_every=5",
    "pretrain.train.progress=false",
    "pretrain.train.batch_size_per_rank=16",
    "tracking.enabled=false",
]


def _probe(curated_uri: str):
    @dsl.pipeline(name="resume-probe")
    def resume_probe(params_yaml: str, overrides: List[str]):
        data = dsl.importer(artifact_uri=curated_uri, artifact_class=dsl.Dataset, reimport=False)
        pretrain(
            params_yaml=params_yaml,
            overrides=overrides,
            curated=data.output,
            launch={"num_nodes": 1, "gpus_per_node": 0, "shared_dir": SHARED},
        )

    return resume_probe


def _run(cluster, demo, shared, root, run_id, params_text, curated, *, kill_after_checkpoint=False):
    """Run the probe pipeline; optionally SIGKILL the pretrain container once a checkpoint exists."""
    from kfp import local

    local.init(
        runner=docker_runner(cluster, demo, shared, run_id, labels={"dinoflow-probe": run_id}),
        pipeline_root=str(root),
        raise_on_error=False,
    )
    outcome: dict = {}

    def go():
        try:
            outcome["task"] = _probe(str(curated))(params_yaml=params_text, overrides=STEPS)
        except BaseException as e:  # noqa: BLE001 - reported by the caller's assertion
            outcome["error"] = e

    worker = threading.Thread(target=go)
    worker.start()
    if kill_after_checkpoint:
        ckpt_root = shared / run_id / "pretrain"
        deadline = time.monotonic() + 600
        client, label = cluster.pod.client, {"label": f"dinoflow-probe={run_id}"}
        containers: list = []
        # stop waiting as soon as the step is over: a step that failed early never checkpoints.
        # The container handle is taken while it trains, so the kill follows the checkpoint at once
        # (published checkpoints only ever carry the step_<N> name: the temp directory is hidden)
        while worker.is_alive() and time.monotonic() < deadline and not list(ckpt_root.rglob("step_*")):
            containers = containers or client.containers.list(filters=label)
            time.sleep(0.05)
        assert list(ckpt_root.rglob("step_*")), f"no checkpoint appeared under {ckpt_root}: {outcome}"
        (container,) = containers or client.containers.list(filters=label)
        container.kill(signal="SIGKILL")
    worker.join(timeout=900)
    assert not worker.is_alive()
    return outcome


def _teacher(root: Path, outcome: dict) -> dict[str, torch.Tensor]:
    """The teacher a finished probe run exported (its step's log is in the captured output)."""
    found = list(root.rglob("teacher/backbone.pth"))
    assert "error" not in outcome and len(found) == 1, f"the pretrain step did not finish under {root}: {outcome}"
    return torch.load(found[0], weights_only=True, map_location="cpu")


def test_killed_pretrain_step_resumes_on_retry_and_matches_an_uninterrupted_run(cluster, demo_data, tmp_path, scratch):
    params = cluster_params(tmp_path)
    shared = scratch("dinoflow-shared-")
    # the curated shards, made once on the host onto the shared volume; the probe imports them from
    # the path the step containers see, like an upstream step's artifact
    cfg = load_config(
        params,
        [
            f"curate.sources=[{demo_data}/pool]",
            f"curate.seeds={demo_data}/seeds",
            f"curate.eval_sets=[{demo_data}/eval]",
            f"curate.out_dir={shared}/curated",
            f"curate.report_dir={shared}/curation-reports",
            "tracking.enabled=false",
        ],
    )
    run_stage("curate", cfg)
    text = params.read_text()
    curated = f"{SHARED}/curated"

    interrupted, retried, straight = (scratch(f"dinoflow-{n}-") for n in ("killed", "retry", "straight"))
    _run(cluster, demo_data, shared, interrupted, "run-a", text, curated, kill_after_checkpoint=True)
    assert not list(interrupted.rglob("teacher/backbone.pth")), "the killed step must not have finished"
    checkpoints = sorted(p.name for p in (shared / "run-a" / "pretrain").rglob("step_*"))
    assert checkpoints, "the durable checkpoint survives the killed pod"

    resumed = _teacher(retried, _run(cluster, demo_data, shared, retried, "run-a", text, curated))
    reference = _teacher(straight, _run(cluster, demo_data, shared, straight, "run-b", text, curated))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), "resume must be exact"
    # the curves too: steps before the kill come from the checkpoint, the rest were trained again
    curves = [_curve(next(d.rglob("pretrain/curves"))) for d in (retried, straight)]
    assert [r["step"] for r in curves[0]] == [str(i) for i in range(1, MAX_STEPS + 1)]
    assert curves[0] == curves[1]


def _curve(path: Path) -> list[dict[str, str]]:
    """The metrics CSV's rows without throughput, which depends on the machine's load."""
    rows = list(csv.DictReader(path.read_text().splitlines()))
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]
