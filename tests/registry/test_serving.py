"""The registered champion as its consumers use it: `mlflow models serve` answers its own serving
example with the embeddings `dinoflow embed` computes, and its requirements install and load in a
fresh virtual environment."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from services import BIN, free_port, stop, wait_http

from dinoflow.embedding.parts import read_embeddings

pytestmark = pytest.mark.slow


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _refused(url: str) -> tuple[int, dict]:
    """(status, body) for a 1×400000 PNG: the resize would scale its shorter side up to a huge image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (400_000, 1)).save(buf, "PNG")
    try:
        _post(url, {"inputs": [base64.b64encode(buf.getvalue()).decode()]})
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    raise AssertionError("the served model answered a 1x400000 image")


def _model_dir(champion, dest: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(champion.uri, dst_path=str(dest), tracking_uri=champion.tracking_uri)
    )


def test_served_champion_answers_its_serving_example_like_dinoflow_embed(champion, tmp_path):
    example = json.loads((_model_dir(champion, tmp_path / "model") / "serving_input_example.json").read_text())
    # the serving command execs uvicorn from PATH: the venv must be on it, as after `. .venv/bin/activate`
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion.tracking_uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            champion.uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, proc, log)
        served = np.asarray(_post(f"http://127.0.0.1:{port}/invocations", example)["predictions"], dtype=np.float32)
        both = _post(f"http://127.0.0.1:{port}/invocations", {**example, "params": {"pooled_patch_tokens": True}})
        refused = _refused(f"http://127.0.0.1:{port}/invocations")
    finally:
        stop(proc)
    assert served.shape == (len(example["inputs"]), champion.student.embed_dim)
    status, body = refused
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", (status, body)
    assert "over_limit: 400000x1 has aspect ratio 4e+05 > serving.max_aspect_ratio 20" in body["message"]
    np.testing.assert_allclose(np.asarray(both["predictions"]["embedding"]), served, atol=1e-6)
    assert np.asarray(both["predictions"]["pooled_patch_tokens"]).shape == served.shape

    images = tmp_path / "images"
    images.mkdir()
    for i, b64 in enumerate(example["inputs"]):
        (images / f"example_{i}.png").write_bytes(base64.b64decode(b64))
    out = tmp_path / "emb.parquet"
    r = subprocess.run(
        [str(BIN / "dinoflow"), "embed", champion.uri, str(images), "-o", str(out), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    uids, embedded = read_embeddings(out)
    assert uids == [f"example_{i}.png" for i in range(len(example["inputs"]))]
    np.testing.assert_allclose(embedded, served, atol=1e-5)


def test_model_requirements_install_and_load_in_a_fresh_venv(champion, tmp_path):
    """Only the model's own requirements.txt, from the package index, in a new virtual environment.

    torch is installed first at the pinned version, as the Makefile does: on this machine pip's
    find-links resolve `torch==<version>` to the local CPU wheel, so no multi-GB CUDA build is
    downloaded (elsewhere, install it from https://download.pytorch.org/whl/cpu first).
    """
    model = _model_dir(champion, tmp_path / "model")
    reqs = (model / "requirements.txt").read_text().split()
    torch_req = next(r for r in reqs if r.startswith("torch=="))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for cmd in (pip + [torch_req], pip + ["-r", str(model / "requirements.txt")]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    script = (
        "import json, sys, numpy as np, mlflow\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "ex = json.load(open(sys.argv[1] + '/serving_input_example.json'))\n"
        "out = m.predict(np.array(ex['inputs'], dtype=object))\n"
        "print(json.dumps(out.tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, str(model)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.asarray(json.loads(r.stdout.strip().splitlines()[-1]), dtype=np.float32)
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout
    assert "dinoflow" not in freeze.lower(), "the model must carry its own code"
    example = json.loads((model / "serving_input_example.json").read_text())
    expected = mlflow.pyfunc.load_model(str(model)).predict(np.array(example["inputs"], dtype=object))
    np.testing.assert_allclose(got, expected, atol=1e-6)
