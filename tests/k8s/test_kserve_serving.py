"""Serving the registry's champion with KServe (k8s/serving/): the objects validate against the
released KServe CRDs (tests/k8s/crds/kserve/SOURCE.md) with unknown fields rejected, they fit
together (runtime ↔ model format and protocol, storage container ↔ storageUri ↔ the registry's
model and alias), and the runtime KServe would run answers like `dinoflow embed`.

No Kubernetes API server nor KServe controller can run here. What runs for real: the storage
container's own command (downloading `models:/NAME@champion` from a real MLflow server) and
MLServer with its MLflow runtime, started with the ServingRuntime container's environment and
arguments from the manifest (ports and the model directory moved to this machine). MLServer runs
from its own virtual environment (docker/serving/requirements.txt, the serving image's): it cannot
be installed beside the project's pins (MLServer 1.7.1 needs fastapi < 0.116; constraints.txt pins
0.165)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from k8s_build import K8S, ROOT, build
from services import free_port, stop, wait_http

from dinoflow.config import RegisterConfig

SERVING = K8S / "serving"
CRDS = Path(__file__).parent / "crds" / "kserve"
SERVING_REQUIREMENTS = ROOT / "docker" / "serving" / "requirements.txt"


@lru_cache(maxsize=None)
def _schemas() -> dict[tuple[str, str], dict]:
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
                out[key] = _strict(v["schema"]["openAPIV3Schema"])
    return out


def _strict(schema: dict) -> dict:
    """The schema with unknown fields rejected (kubectl --validate=strict): additionalProperties
    false wherever properties are listed and unknown fields are not explicitly kept."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                if not node.get("x-kubernetes-preserve-unknown-fields"):
                    node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    s["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is the API server's, not the CRD's
    return s


def _errors(obj: dict) -> list[str]:
    schema = _schemas()[(obj["apiVersion"], obj["kind"])]
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    return {d["kind"]: d for d in build(SERVING)}


def test_every_object_validates_against_the_kserve_crds(objects):
    assert set(objects) == {"InferenceService", "ServingRuntime", "ClusterStorageContainer"}
    for kind, obj in objects.items():
        assert _errors(obj) == [], kind
    typo = copy.deepcopy(objects["InferenceService"])
    typo["spec"]["predictor"]["model"]["storageURI"] = typo["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e for e in _errors(typo)), "the validator rejects an unknown field"


def test_the_pieces_fit_together(objects):
    isvc, runtime, storage = (objects[k] for k in ("InferenceService", "ServingRuntime", "ClusterStorageContainer"))
    model = isvc["spec"]["predictor"]["model"]
    register = RegisterConfig()
    assert model["storageUri"] == f"models:/{register.model_name}@{register.alias}"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert any(model["storageUri"].startswith(f["prefix"]) for f in storage["spec"]["supportedUriFormats"])
    (container,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLSERVER_DEBUG"] == "false" and env["MLSERVER_MODEL_IMPLEMENTATION"].startswith("dinoflow_mlserver.")
    for c in (container, storage["spec"]["container"]):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["capabilities"] == {"drop": ["ALL"]} and not sc["allowPrivilegeEscalation"]
        assert c["resources"]["limits"]["memory"]


# ------------------------------------------------------------------ the runtime, for real


@pytest.fixture(scope="session")
def serving_python(tmp_path_factory) -> Path:
    """The serving image's environment: $DINOFLOW_SERVING_VENV, else one built once per
    requirements file under ~/.cache/dinoflow (torch as this environment's, then the file)."""
    explicit = os.environ.get("DINOFLOW_SERVING_VENV")
    if explicit:
        return Path(explicit) / "bin" / "python"
    import torch

    key = hashlib.sha256(SERVING_REQUIREMENTS.read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    venv = Path.home() / ".cache" / "dinoflow" / f"serving-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"torch=={torch.__version__}"], check=True, timeout=1800)
        subprocess.run([*pip, "-r", str(SERVING_REQUIREMENTS)], check=True, timeout=1800)
        (venv / ".installed").touch()
    return python


@pytest.fixture(scope="module")
def champion(mlflow_server, tmp_path_factory):
    """A tiny student registered under a fresh name with the alias `champion`."""
    import mlflow
    import torch

    from dinoflow.config import load_config
    from dinoflow.embedding.mlflow_model import log_embedding_model
    from dinoflow.models import build_backbone, export_backbone

    work = tmp_path_factory.mktemp("kserve-model")
    torch.manual_seed(3)
    model = build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval()
    pth = export_backbone(model, work / "backbone.pth")
    cfg = load_config(None, ["evaluate.image_size=28", "evaluate.resize_ratio=1.0"])
    name = f"dinoflow-kserve-{os.getpid()}"
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("kserve")
    with mlflow.start_run():
        info = log_embedding_model(pth, "model", cfg, registered_model_name=name)
    client = mlflow.MlflowClient(mlflow_server.uri)
    client.set_registered_model_alias(name, "champion", info.registered_model_version)
    return f"models:/{name}@champion", mlflow_server.uri


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        code, raw = e.code, e.read() or b"{}"
    try:
        return code, json.loads(raw)
    except ValueError:  # a server error's plain-text body
        return code, {"text": raw.decode(errors="replace")[:500]}


def _infer(data: list, datatype: str = "BYTES", shape: list | None = None) -> bytes:
    inp = {"name": "input-0", "shape": shape or [len(data)], "datatype": datatype, "data": data}
    return json.dumps({"inputs": [inp]}).encode()


@pytest.mark.slow
def test_the_runtime_answers_like_dinoflow_embed_and_refuses_hostile_requests(
    objects, champion, serving_python, tmp_path
):
    uri, tracking = champion
    storage = objects["ClusterStorageContainer"]["spec"]["container"]
    models = tmp_path / "mnt" / "models"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    # the storage container's own command, with the two arguments KServe gives it; its `python` is the
    # image's, which here is this interpreter (the one with dinoflow installed)
    command = [sys.executable if storage["command"][0] == "python" else storage["command"][0], *storage["command"][1:]]
    got = subprocess.run([*command, uri, str(models)], env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0 and (models / "MLmodel").is_file(), got.stderr[-2000:]

    (container,) = objects["ServingRuntime"]["spec"]["containers"]
    name = objects["InferenceService"]["metadata"]["name"]
    http = free_port()
    run_env = {e["name"]: e["value"].replace("{{.Name}}", name) for e in container["env"]}
    run_env.update(
        MLSERVER_MODEL_URI=str(models),
        MLSERVER_HTTP_PORT=str(http),
        MLSERVER_GRPC_PORT=str(free_port()),
        MLSERVER_METRICS_PORT=str(free_port()),
        MLSERVER_HOST="127.0.0.1",
        PYTHONPATH=str(ROOT / "docker" / "serving"),  # the image's /opt/serving
        HOME=str(tmp_path),
        PATH=f"{serving_python.parent}:{os.environ['PATH']}",
    )
    args = [a.replace("/mnt/models", str(models)) for a in container["args"]]
    log = tmp_path / "mlserver.log"
    proc = subprocess.Popen(
        [str(serving_python.parent / args[0]), *args[1:]],
        env=run_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{http}/v2/models/{name}/ready", 300, proc, log)
        url = f"http://127.0.0.1:{http}/v2/models/{name}/infer"
        example = json.loads((models / "serving_input_example.json").read_text())["inputs"]
        status, body = _post(url, _infer(example))
        assert status == 200, body
        (out,) = body["outputs"]
        served = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        hostile = {
            "not an image": _infer(["bm90IGFuIGltYWdl"]),
            "not base64": _infer(["%%%"]),
            "numbers, not images": _infer([1.0, 2.0, 3.0, 4.0], "FP32", [2, 2]),
            "too many images": _infer(["a"] * 1000),
            "shape lies": _infer(["a"], shape=[3]),
            "not JSON": b"{not json",
        }
        answers = {what: _post(url, body) for what, body in hostile.items()}
    finally:
        stop(proc)
    for what, (status, body) in answers.items():
        assert 400 <= status < 500, (what, status, body)
        assert "Traceback" not in json.dumps(body), what

    import base64

    from dinoflow.cli import main
    from dinoflow.embedding.parts import read_embeddings

    images = tmp_path / "images"
    images.mkdir()
    for i, b64 in enumerate(example):
        (images / f"example_{i}.png").write_bytes(base64.b64decode(b64))
    emb_out = tmp_path / "emb.parquet"
    assert main(["embed", uri, str(images), "-o", str(emb_out), "--tracking-uri", tracking, "--no-progress"]) == 0
    _, reference = read_embeddings(emb_out)
    assert served.shape == reference.shape
    np.testing.assert_allclose(served, reference, atol=1e-5)
