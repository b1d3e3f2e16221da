"""What a cluster's KFP backend gets in the compiled IR: no AWS_* in any step (KFP's launcher would
send its own artifact traffic to the project's MinIO), retries on every step that can be retried
safely, curation on the CPU image, a data version in the curation cache keys, and the user's own
images (registry, digests, pull secrets), since no public registry serves the project's images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_PARAMS = ROOT / "pipelines" / "params.cluster.example.yaml"
DIGEST = "sha256:" + "ab" * 32
NOT_RETRIED = {"register", "register-2"}  # a retry after create_model_version would register twice
CURATION = ("curate-plan", "curate-partition", "curate-global")


def _compile(tmp_path, *extra: str) -> tuple[str, list[dict]]:
    out = tmp_path / "ir.yaml"
    assert main(["compile", "-c", str(CLUSTER_PARAMS), "-o", str(out), *extra]) == 0
    text = out.read_text()
    return text, list(yaml.safe_load_all(text))


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("ir"))


def _tasks(spec) -> dict[str, dict]:
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def _image(spec, task: str) -> str:
    label = spec["components"][_tasks(spec)[task]["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]["image"]


def test_no_aws_variable_anywhere_in_the_ir(ir):
    text, docs = ir
    assert "AWS_" not in text
    envs = {
        kv["envVar"]
        for ex in docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
        for s in ex.get("secretAsEnv", [])  # the launch_options checks get no credentials
        for kv in s["keyToEnv"]
    }
    assert {"DINOFLOW_S3_ENDPOINT_URL", "DINOFLOW_S3_ACCESS_KEY_ID", "DINOFLOW_S3_SECRET_ACCESS_KEY"} <= envs


def test_every_step_that_can_be_retried_is(ir):
    _, (spec, _) = ir
    containers = {n: t for n, t in _tasks(spec).items() if not n.startswith(("for-loop-", "condition-", "exit-"))}
    assert NOT_RETRIED < set(containers)
    for name, task in containers.items():
        if name in NOT_RETRIED:
            assert "retryPolicy" not in task, name
        else:
            assert task["retryPolicy"]["maxRetryCount"] == 3, name
    assert {
        "curate-partition",
        "evaluate",
        "evaluate-2",
        "data-version",
        "finalize",
        "close-stale-runs",
        "launch-options",
        "launch-options-2",
    } <= set(containers)


def test_curation_runs_on_the_cpu_image(ir):
    _, (spec, _) = ir
    for name in (*CURATION, "data-version", "launch-options", "launch-options-2"):
        assert _image(spec, name).startswith("dinoflow/dinoflow-cpu:"), name


def test_a_changed_pool_reaches_every_curation_cache_key(ir):
    """data_version (never cached) feeds every curation step, so their cache keys follow the pool."""
    _, (spec, _) = ir
    tasks = _tasks(spec)
    assert "enableCache" not in tasks["data-version"]["cachingOptions"]  # proto default: off
    for name in CURATION:
        param = tasks[name]["inputs"]["parameters"]["data_version"]
        # the plan takes it from the task; inside the loop and after it, as the channel of that output
        assert param in (
            {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "data-version"}},
            {"componentInputParameter": "pipelinechannel--data-version-Output"},
        ), name


def test_registry_digest_and_pull_secret_reach_every_step(tmp_path, capsys):
    text, (spec, platform) = _compile(
        tmp_path,
        "--registry",
        "ghcr.io/acme/",
        "--image-digest",
        f"train={DIGEST}",
        "--image-pull-secret",
        "regcred",
    )
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/acme/dinoflow-cuda:0.1.0@{DIGEST}", "ghcr.io/acme/dinoflow-cpu:0.1.0"}
    assert "docker.io" not in text and " dinoflow/dinoflow-" not in text
    # the TrainJob pods' image is the pinned training image
    assert (
        spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"]
        == f"ghcr.io/acme/dinoflow-cuda:0.1.0@{DIGEST}"
    )
    for label, ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert [s["secretName"] for s in ex["imagePullSecret"]] == ["regcred"], label
    for label, ex in spec["deploymentSpec"]["executors"].items():  # and to the TrainJobs a step launches
        assert {"name": "DINOFLOW_IMAGE_PULL_SECRETS", "value": "regcred"} in ex["container"]["env"], label
    assert text.startswith("# PIPELINE DEFINITION")  # KFP's header survives the rewrite
    err = capsys.readouterr().err
    assert "ghcr.io/acme/dinoflow-cpu:0.1.0 has no @sha256 digest" in err and "dinoflow-cuda" not in err


def test_an_images_file_pins_both_images(tmp_path):
    refs = {"train": f"reg.example/t@{DIGEST}", "cpu": f"reg.example/c:1@{DIGEST}"}
    (tmp_path / "images.json").write_text(json.dumps(refs))
    _, (spec, _) = _compile(tmp_path, "--images-file", str(tmp_path / "images.json"))
    assert _image(spec, "pretrain") == refs["train"] and _image(spec, "curate-partition") == refs["cpu"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cpu-image", "reg/c@sha256:abc"], "malformed digest"),
        (["--image-digest", "gpu=" + DIGEST], "KIND=sha256"),
        (["--image-digest", "train=md5:00"], "64 lowercase hex"),
        (["--images-file", "/nonexistent.json"], "make images"),
    ],
)
def test_bad_image_references_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "x.yaml"
    assert main(["compile", "-o", str(out), *args]) == 1
    assert message in capsys.readouterr().err and not out.exists()
