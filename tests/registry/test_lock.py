"""The gate lock against the real MLflow server: concurrent `dinoflow register` processes for one model
end with the champion on the best gated version; a held lock makes others wait, a dead holder's lock is broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.models import build_backbone, export_backbone
from dinoflow.registry.lock import TAG_HOLDER, gate_lock, lock_name

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FINGERPRINT = "e" * 64


def _candidate(work: Path, seed: int, score: float, uri: str, name: str) -> Path:
    """A workdir with its own student, an eval.json that evaluated it, and params.yaml for `dinoflow register`."""
    work.mkdir(parents=True)
    torch.manual_seed(seed)
    pth = export_backbone(build_backbone("vit_pico", patch_size=7, img_size=28), work / "models" / "student")
    entry = lambda v: {"mnist": {"knn_top1": v}}  # noqa: E731
    report = {
        "student": entry(score),
        "teacher": entry(score + 0.01),
        "random_init": entry(0.2),
        "_provenance": {
            "models": {"student": {"path": str(pth), "sha256": file_sha256(pth)}},
            "datasets": {"mnist": {"fingerprint": FINGERPRINT}},
        },
    }
    (work / "eval.json").write_text(json.dumps(report))
    params = {
        "tracking": {"tracking_uri": uri, "system_metrics": False, "experiment": name},
        "register": {
            "model_name": name,
            "model_path": str(pth.parent),
            "eval_report": str(work / "eval.json"),
            "report": str(work / "registry.json"),
            "teacher_path": None,
            "champion_tolerance": 0.0,
            "onnx": {"enabled": False},
        },
        "evaluate": {"image_size": 28, "resize_ratio": 1.0},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


# Run in each racing process: `dinoflow register`, with the race window held open. Every process
# reaches the gate (arrival file), then reads the champion and waits until all have arrived, then
# waits longer the lower its score before it writes. Without the lock all read the same champion
# and the worst writes the alias last; with it, the others wait at the lock and each reads the
# champion its predecessor left. The registry and the processes are real; only the timing is set.
RACER = """
import sys, time
from pathlib import Path
import dinoflow.registry.stage as stage
from dinoflow.cli import main

arrived, n, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
real_lock, real_champion, seen = stage.gate_lock, stage.current_champion, []

def lock(client, name, *a, **kw):
    (arrived / str(delay)).touch()
    return real_lock(client, name, *a, **kw)

def champion(client, name, alias):
    held = real_champion(client, name, alias)
    if not seen:
        seen.append(held)
        deadline = time.monotonic() + 300
        while len(list(arrived.iterdir())) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
    return held

stage.gate_lock, stage.current_champion = lock, champion
sys.exit(main(["register"]))
"""


def test_concurrent_registers_leave_the_champion_on_the_best_gated_version(tmp_path, mlflow_server):
    name = f"dinoflow-race-{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["DINOFLOW_STATE_DIR"] = str(tmp_path / "state")
    first = _candidate(tmp_path / "first", 0, 0.40, mlflow_server.uri, name)
    r = subprocess.run([str(BIN / "dinoflow"), "register"], cwd=first, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    scores = {1: 0.600, 2: 0.419, 3: 0.550, 4: 0.480}  # all beat the champion's 0.40
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    procs = []
    for i, s in scores.items():
        work = _candidate(tmp_path / f"c{i}", i, s, mlflow_server.uri, name)
        delay = f"{(0.7 - s) * 15:.2f}"  # the worst writes last
        cmd = [sys.executable, "-c", RACER, str(arrived), str(len(scores)), delay]
        procs.append((work, subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for _, p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()[-2000:]
    reports = [json.loads((w / "registry.json").read_text()) for w, _ in procs]
    client = mlflow.MlflowClient(mlflow_server.uri)
    champion = client.get_model_version_by_alias(name, "champion")
    best = max(reports, key=lambda rep: rep["gate"]["knn_top1"])
    assert best["gate"]["knn_top1"] == 0.600
    got = [(r["version"], r["gate"]["knn_top1"], r["took_alias"]) for r in reports]
    assert champion.version == best["version"], got
    # each verdict was taken against the champion of its moment: the passes form a rising chain,
    # and a candidate that took the alias still holds it or was beaten by a later, better one
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert len(versions) == 5
    passed = [float(v.tags["gate.knn_top1"]) for v in versions if v.tags["gate"] == "passed"]
    assert passed == sorted(passed) and passed[-1] == 0.6, passed
    assert [r["took_alias"] for r in reports].count(True) == len(passed) - 1, got
    assert not client.search_registered_models(f"name = '{lock_name(name)}'"), "the lock is released"


def test_a_held_lock_makes_the_next_register_wait_and_says_who_holds_it(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    name = f"dinoflow-lock-{time.time_ns()}"
    with gate_lock(client, name) as token:
        assert client.get_registered_model(lock_name(name)).tags[TAG_HOLDER] == token
        t0 = time.monotonic()
        with pytest.raises(DinoflowError, match=rf"gate lock \(registered model '{lock_name(name)}'\) has been held"):
            with gate_lock(client, name, wait_s=1.0, stale_s=60.0):
                pass
        assert time.monotonic() - t0 < 10
    with gate_lock(client, name, wait_s=1.0):  # released: free at once
        pass


def test_the_lock_of_a_register_that_died_is_broken_after_it_goes_stale(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    name = f"dinoflow-stale-{time.time_ns()}"
    client.create_registered_model(lock_name(name), tags={TAG_HOLDER: "host:4242:dead"})
    t0 = time.monotonic()
    with gate_lock(client, name, wait_s=30.0, stale_s=1.0) as token:
        assert client.get_registered_model(lock_name(name)).tags[TAG_HOLDER] == token
    assert 1.0 <= time.monotonic() - t0 < 20
