"""docker/Dockerfile.serving: KServe's predictor image (k8s/serving/). Its environment is pinned
whole (MLServer cannot share the project's: it needs fastapi < 0.116, constraints.txt pins 0.165),
it runs as uid 10001 under tini, and it carries the runtime module the ServingRuntime names. The
same requirements file builds the environment tests/k8s/test_kserve_serving.py runs MLServer in."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile.serving"
REQUIREMENTS = ROOT / "docker" / "serving" / "requirements.txt"


def test_every_requirement_is_pinned_and_the_models_own_pins_agree():
    lines = [ln.strip() for ln in REQUIREMENTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pins = dict(ln.split("==") for ln in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", ln) for ln in lines), lines
    constraints = dict(
        ln.split("==") for ln in (ROOT / "constraints.txt").read_text().splitlines() if "==" in ln and "#" not in ln
    )
    # what the registered model needs (dinoflow.embedding.mlflow_model.REQUIREMENTS) at the versions the CPU image has
    for dist in ("mlflow", "numpy", "pillow", "pyyaml", "pydantic", "pandas"):
        theirs = {k.lower(): v for k, v in constraints.items()}.get(dist)
        assert pins[dist] == theirs, dist
    assert pins["fastapi"].startswith("0.115.") and not constraints["fastapi"].startswith("0.115.")


def test_image_is_non_root_under_tini_with_the_runtime_module():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(r"^USER 10001:10001$", text, re.M) and 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text
    assert "COPY docker/serving/dinoflow_mlserver.py /opt/serving/" in text and "PYTHONPATH=/opt/serving" in text
    runtime = yaml.safe_load((ROOT / "k8s" / "serving" / "serving-runtime.yaml").read_text())
    env = {e["name"]: e["value"] for e in runtime["spec"]["containers"][0]["env"]}
    module = env["MLSERVER_MODEL_IMPLEMENTATION"].rsplit(".", 1)[0]
    assert (ROOT / "docker" / "serving" / f"{module}.py").is_file()
