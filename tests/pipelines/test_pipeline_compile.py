"""The compiled IR YAML carries the cluster settings: GPU, tolerations, /dev/shm, secrets, retries, caching."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dinoflow.pipeline_cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "dinov2_pipeline.yaml"
    assert main(["compile", "-c", str(ROOT / "params.yaml"), "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2, "pipeline spec + platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _executor_of(spec, task: str, within: dict | None = None) -> str:
    tasks = (within or spec["root"]["dag"]["tasks"])
    comp = spec["components"][tasks[task]["componentRef"]["name"]]
    return comp["executorLabel"]


def test_dag_shape_register_always_runs(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    # no condition: register runs after every evaluate and applies the gate itself (as under DVC)
    assert set(tasks) == {"curate", "pretrain", "distill", "evaluate", "register"}
    assert "triggerPolicy" not in tasks["register"]
    assert tasks["pretrain"]["dependentTasks"] == ["curate"]
    assert sorted(tasks["distill"]["dependentTasks"]) == ["curate", "pretrain"]
    assert sorted(tasks["register"]["dependentTasks"]) == ["distill", "evaluate"]
    assert "enableCache" not in tasks["register"]["cachingOptions"]  # proto default: caching off
    assert tasks["curate"]["cachingOptions"]["enableCache"] is True


def test_gpu_steps_have_accelerator_retries_and_resources(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for step in ("pretrain", "distill"):
        res = spec["deploymentSpec"]["executors"][_executor_of(spec, step)]["container"]["resources"]
        acc = res["accelerator"]
        assert "accelerator_type" in acc["resourceType"] and "gpus_per_node" in acc["resourceCount"]
        assert tasks[step]["retryPolicy"]["maxRetryCount"] == 3
        assert res["resourceMemoryRequest"] == "32Gi"
    cur = spec["deploymentSpec"]["executors"][_executor_of(spec, "curate")]["container"]
    assert "accelerator" not in cur["resources"] and cur["image"].startswith("dinoflow/dinoflow-cpu")


def test_platform_settings_tolerations_shm_secrets(compiled):
    spec, executors = compiled
    for step in ("pretrain", "distill"):
        ex = executors[_executor_of(spec, step)]
        assert ex["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "gpu_tolerations"
        assert ex["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "gpu_node_selector"
        (shm,) = ex["emptyDirMounts"]
        assert shm == {"medium": "Memory", "mountPath": "/dev/shm", "volumeName": "dshm", "sizeLimit": "16Gi"}
    for ex in executors.values():
        secrets = {s["secretName"]["runtimeValue"]["constant"] if isinstance(s.get("secretName"), dict) else s.get("secretName")
                   for s in ex["secretAsEnv"]}
        assert secrets == {"dinoflow-s3", "dinoflow-mlflow"}
        envs = {kv["envVar"] for s in ex["secretAsEnv"] for kv in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs
    assert len(executors) == 5


def test_pipeline_parameters_and_embedded_params(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_tolerations"]["defaultValue"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert params["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    # one-line JSON (multi-line defaults break the IR file's header comment)
    assert "\n" not in params["params_yaml"]["defaultValue"]
    assert yaml.safe_load(params["params_yaml"]["defaultValue"]) == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["trainjob_runtime"]["defaultValue"] == "dinoflow-torch-distributed"


def test_compile_rejects_an_invalid_params_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: {knn_kk: 3}\n")
    assert main(["compile", "-c", str(bad), "-o", str(tmp_path / "x.yaml")]) == 1
    assert "knn_kk" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_submit_to_an_unreachable_host_fails_clearly(capsys):
    """No KFP API server can run here; this checks only the error path of `submit`."""
    assert main(["submit", "--host", "http://127.0.0.1:9", "-c", str(ROOT / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert "could not submit" in err and "127.0.0.1:9" in err


def test_find_repo_root_from_elsewhere(tmp_path):
    from dinoflow.pipeline_cli import find_repo_root

    assert find_repo_root(tmp_path) == ROOT  # falls back to the editable checkout
    assert find_repo_root(ROOT / "k8s") == ROOT
