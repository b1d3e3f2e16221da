"""The compiled IR YAML carries the cluster settings. No KFP API server can run here: these tests
read the IR that `dinoflow pipeline compile` writes, which is exactly what a backend receives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.cli import main, runner_service_account

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_PARAMS = ROOT / "pipelines" / "params.cluster.example.yaml"
TRAINING = ("pretrain", "pretrain-2", "distill", "distill-2")  # one-node branch, TrainJob branch
AFTER_CURATION = ("pretrain", "distill", "evaluate", "register")
CURATION = ("curate-plan", "curate-partition", "curate-global")  # the fan-out
LAUNCH = {"training": "launch-options", "curation": "launch-options-2"}  # each builds one `launch` dict


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "dinov2_pipeline.yaml"
    assert main(["compile", "-c", str(CLUSTER_PARAMS), "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2, "pipeline spec + platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec) -> dict[str, dict]:
    """Every task of every DAG, by name."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


# the TrainJob settings both launch dicts take from the same pipeline parameters
SHARED_LAUNCH_INPUTS = {
    "accelerator_type": "accelerator_type",
    "image": "image",
    "trainjob_runtime": "trainjob_runtime",
    "trainjob_runtime_kind": "trainjob_runtime_kind",
    "tolerations": "gpu_tolerations",
    "node_selector": "gpu_node_selector",
}


def _launch_inputs(tasks: dict, which: str) -> dict[str, str]:
    """launch_options input → the pipeline parameter it is given."""
    params = tasks[LAUNCH[which]]["inputs"]["parameters"]
    return {k: v["componentInputParameter"].removeprefix("pipelinechannel--") for k, v in params.items()}


def _executor(spec, task: str) -> str:
    return spec["components"][_tasks(spec)[task]["componentRef"]["name"]]["executorLabel"]


def test_dag_shape_exit_handler_and_no_gate_skip(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finalize"}
    assert root["finalize"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    (loop,), (branch,) = ([n for n in inner if n.startswith(p)] for p in ("for-loop-", "condition-branches-"))
    assert set(inner) == {"close-stale-runs", "data-version", "curate-plan", loop, "curate-global", branch} | set(
        LAUNCH.values()
    )
    branches = spec["components"][inner[branch]["componentRef"]["name"]]["dag"]["tasks"]
    conditions = {t["triggerPolicy"]["condition"]: t["componentRef"]["name"] for t in branches.values()}
    one = conditions["int(inputs.parameter_values['pipelinechannel--num_nodes']) == 1"]
    many = conditions["!(int(inputs.parameter_values['pipelinechannel--num_nodes']) == 1)"]
    assert set(spec["components"][one]["dag"]["tasks"]) == set(AFTER_CURATION)
    assert set(spec["components"][many]["dag"]["tasks"]) == {f"{n}-2" for n in AFTER_CURATION}
    tasks = _tasks(spec)
    for name in ("register", "register-2"):
        assert "triggerPolicy" not in tasks[name], "every candidate is registered; the gate decides the alias"
    for name in ("register", "register-2", "finalize", "close-stale-runs", "data-version"):
        assert "enableCache" not in tasks[name]["cachingOptions"]  # proto default: caching off
    for name in (*CURATION, *TRAINING, *LAUNCH.values(), "evaluate", "evaluate-2"):
        assert tasks[name]["cachingOptions"]["enableCache"] is True


def test_curate_runs_as_the_fan_out(compiled):
    """plan → ParallelFor decode + embed over the plan's list → global steps over the collected
    embeddings, whose curated dataset every training step reads."""
    spec, _ = compiled
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    ((loop_name, loop),) = [(n, t) for n, t in inner.items() if n.startswith("for-loop-")]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--curate-plan-Output"
    assert set(spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]) == {"curate-partition"}
    tasks = _tasks(spec)
    assert (
        tasks["curate-plan"]["inputs"]["parameters"]["max_groups"]["componentInputParameter"]
        == "pipelinechannel--curate_groups"
    )
    part = tasks["curate-partition"]["inputs"]["parameters"]
    assert part["groups"]["componentInputParameter"] == "pipelinechannel--curate_groups"
    assert part["group"]["componentInputParameter"] == "pipelinechannel--curate-plan-Output-loop-item"
    glob = tasks["curate-global"]
    emb = glob["inputs"]["artifacts"]["embeddings"]["taskOutputArtifact"]  # dsl.Collected over the loop
    assert emb == {"outputArtifactKey": "pipelinechannel--curate-partition-embeddings", "producerTask": loop_name}
    for name in TRAINING:
        curated = tasks[name]["inputs"]["artifacts"]["curated"]["componentInputArtifact"]
        assert curated == "pipelinechannel--curate-global-curated", name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: params[k]["defaultValue"] for k in ("curate_groups", "curate_num_nodes", "curate_procs_per_node")} == {
        "curate_groups": 4,
        "curate_num_nodes": 1,
        "curate_procs_per_node": 1,
    }


def test_the_global_curation_step_launches_like_training(compiled):
    """The global step runs in its CPU pod (torchrun for procs > 1) or submits a TrainJob of
    `curate_num_nodes` GPU nodes: that job's pods get the training GPU placement through its inputs;
    the step itself holds no GPU and is retried like training."""
    spec, executors = compiled
    tasks = _tasks(spec)
    params = tasks["curate-global"]["inputs"]["parameters"]
    assert params["launch"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": LAUNCH["curation"],
    }
    assert not {"run_id", "shared_dir"} & set(params)  # from the pod's label and the DAG's mount
    assert _launch_inputs(tasks, "curation") == {
        "num_nodes": "curate_num_nodes",
        "gpus_per_node": "curate_procs_per_node",
        **SHARED_LAUNCH_INPUTS,
    }
    assert tasks["curate-global"]["retryPolicy"]["maxRetryCount"] == 3
    for name in CURATION:
        res = spec["deploymentSpec"]["executors"][_executor(spec, name)]["container"]["resources"]
        assert "accelerator" not in res and res["resourceCpuLimit"] == res["resourceCpuRequest"], name
        assert "tolerations" not in executors[_executor(spec, name)], "curation pods land on CPU nodes"


def test_no_step_takes_a_run_unique_input(compiled):
    """A run id among the inputs would make every cache key unique: caching would never hit."""
    spec, _ = compiled
    for name, task in _tasks(spec).items():
        if name == "finalize":
            continue  # the exit handler is never cached and takes the run's name
        text = yaml.safe_dump(task.get("inputs", {}))
        assert "pipeline_job" not in text and "pipeline_task" not in text, name
    for name, comp in spec["components"].items():
        inputs = comp.get("inputDefinitions", {}).get("parameters", {})
        assert not {p for p in inputs if "run" in p and "id" in p}, name


def test_every_step_gets_run_id_secrets_volume_and_identity(compiled):
    spec, executors = compiled
    # stale runs, data version, plan, decode + embed, global steps, finalize, 2 × launch options
    # + 2 × (pretrain, distill, evaluate, register)
    assert len(executors) == 16 and {f"exec-{n}" for n in CURATION} <= set(executors)
    checks = {_executor(spec, n) for n in LAUNCH.values()}
    for label in checks:  # they read no data and reach no service: least privilege
        assert executors[label] == {
            "securityContext": {"runAsGroup": "10001", "runAsNonRoot": True, "runAsUser": "10001"}
        }, label
    for label, ex in executors.items():
        if label in checks:
            continue
        assert ex["fieldPathAsEnv"] == [
            {"fieldPath": "metadata.labels['pipeline/runid']", "name": "DINOFLOW_PIPELINE_RUN_ID"}
        ], label
        assert {s["secretName"] for s in ex["secretAsEnv"]} == {"dinoflow-s3", "dinoflow-mlflow"}, label
        envs = {kv["envVar"] for s in ex["secretAsEnv"] for kv in s["keyToEnv"]}
        assert {"DINOFLOW_S3_ACCESS_KEY_ID", "DINOFLOW_S3_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs, label
        assert ex["pvcMount"] == [
            {
                "constant": "dinoflow-shared",
                "mountPath": "/mnt/dinoflow-shared",
                "pvcNameParameter": {"runtimeValue": {"constant": "dinoflow-shared"}},
            }
        ], label
        assert ex["securityContext"] == {"runAsGroup": "10001", "runAsNonRoot": True, "runAsUser": "10001"}
    tasks = _tasks(spec)
    for name in tasks:  # every container task has resources
        if not name.startswith(("for-loop-", "condition-", "exit-handler-")):
            res = spec["deploymentSpec"]["executors"][_executor(spec, name)]["container"]["resources"]
            assert res.get("resourceMemoryRequest") and res.get("resourceCpuRequest"), name
    names = {n: tasks[n]["taskInfo"]["name"] for n in (*CURATION, "pretrain-2", *LAUNCH.values())}
    assert names == {
        "curate-plan": "curate: plan",
        "curate-partition": "curate: decode + embed",
        "curate-global": "curate: global steps",
        "pretrain-2": "pretrain (TrainJob)",
        "launch-options": "training: launch options",
        "launch-options-2": "curate: launch options",
    }


def test_one_node_training_holds_gpus_and_the_trainjob_launcher_none(compiled):
    spec, executors = compiled
    tasks = _tasks(spec)
    for one, many in (("pretrain", "pretrain-2"), ("distill", "distill-2")):
        res = spec["deploymentSpec"]["executors"][_executor(spec, one)]["container"]["resources"]
        assert "gpus_per_node" in res["accelerator"]["resourceCount"] and res["resourceMemoryRequest"] == "32Gi"
        ex = executors[_executor(spec, one)]
        assert ex["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        assert ex["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("gpu_node_selector")
        assert ex["emptyDirMounts"] == [
            {"medium": "Memory", "mountPath": "/dev/shm", "volumeName": "dshm", "sizeLimit": "16Gi"}
        ]
        launcher = spec["deploymentSpec"]["executors"][_executor(spec, many)]["container"]["resources"]
        assert "accelerator" not in launcher and launcher["resourceCpuLimit"] == "2"
        assert "tolerations" not in executors[_executor(spec, many)], "the launcher may land on any CPU node"
        for name in (one, many):
            assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3
            params = tasks[name]["inputs"]["parameters"]
            # the one launch dict; the TrainJob's pods get the GPU tolerations and node selector through it
            assert params["launch"]["componentInputParameter"] == "pipelinechannel--launch-options-Output"
            assert not {"num_nodes", "gpus_per_node", "tolerations", "node_selector", "shared_dir"} & set(params)
    assert _launch_inputs(tasks, "training") == {
        "num_nodes": "num_nodes",
        "gpus_per_node": "gpus_per_node",
        **SHARED_LAUNCH_INPUTS,
    }
    for name in LAUNCH.values():  # no GPU: the check runs on any CPU node
        res = spec["deploymentSpec"]["executors"][_executor(spec, name)]["container"]["resources"]
        assert "accelerator" not in res and res["resourceCpuLimit"] == "1", name


def test_cpu_steps_use_the_cpu_image(compiled):
    spec, _ = compiled
    for name in ("curate-plan", "evaluate", "register", "evaluate-2", "register-2", "finalize"):
        container = spec["deploymentSpec"]["executors"][_executor(spec, name)]["container"]
        assert container["image"].startswith("dinoflow/dinoflow-cpu") and "accelerator" not in container["resources"]


def test_cluster_params_are_embedded_and_laptop_params_refused(compiled, tmp_path, capsys):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "\n" not in params["params_yaml"]["defaultValue"]  # one-line JSON keeps the IR header valid
    assert yaml.safe_load(params["params_yaml"]["defaultValue"]) == yaml.safe_load(CLUSTER_PARAMS.read_text())
    assert params["trainjob_runtime"]["defaultValue"] == "dinoflow-torch-distributed"
    # the laptop demo's params name relative paths: refused, nothing written
    assert main(["compile", "-c", str(ROOT / "params.yaml"), "-o", str(tmp_path / "x.yaml")]) == 1
    err = capsys.readouterr().err
    assert "not ready for a cluster" in err and "data/demo/pool" in err and "demo" in err
    assert not (tmp_path / "x.yaml").exists()


def test_without_params_the_run_must_name_them(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["compile", "-o", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    assert "defaultValue" not in spec["root"]["inputDefinitions"]["parameters"]["params_yaml"]


def test_compile_rejects_an_invalid_params_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: {knn_kk: 3}\n")
    assert main(["compile", "-c", str(bad), "-o", str(tmp_path / "x.yaml")]) == 1
    assert "knn_kk" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_submit_to_an_unreachable_host_fails_clearly(capsys):
    """No KFP API server can run here; this checks only the error path of `submit`."""
    assert main(["submit", "--host", "http://127.0.0.1:9", "-c", str(CLUSTER_PARAMS)]) == 1
    err = capsys.readouterr().err
    assert "could not submit" in err and "127.0.0.1:9" in err


def test_submit_options_are_pipeline_parameters(compiled):
    from pipelines.cli import PIPELINE_ARGUMENTS, build_parser, submit_arguments

    spec, _ = compiled
    assert set(PIPELINE_ARGUMENTS) <= set(spec["root"]["inputDefinitions"]["parameters"])
    args = build_parser().parse_args(
        [
            "submit",
            "--host",
            "h",
            "--curate-groups",
            "16",
            "--curate-num-nodes",
            "2",
            "--curate-procs-per-node",
            "8",
            "--num-nodes",
            "4",
        ]
    )
    assert submit_arguments(args) == {
        "curate_groups": 16,
        "curate_num_nodes": 2,
        "curate_procs_per_node": 8,
        "num_nodes": 4,
    }


def test_submit_runs_steps_as_the_overlays_service_account():
    assert runner_service_account(None) == "pipeline-runner"  # k8s/overlays/kfp-standalone
    assert runner_service_account("team-a") == "default-editor"  # k8s/overlays/kfp-multi-user


def test_the_cli_compiles_from_any_directory(tmp_path):
    """`dinoflow pipeline` imports the DAG as an installed package: no repository checkout on the
    path, no sys.path patching (a fresh interpreter, run away from the repository)."""
    import subprocess
    import sys

    out = tmp_path / "ir.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "dinoflow", "pipeline", "compile", "-o", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load_all(out.read_text()).__next__()["pipelineInfo"]["name"] == "dinoflow-dinov2"
