"""torchx: the component builds a torchrun AppDef; `torchx run -s local_cwd` runs 2 CPU workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# torchx is the extra `dinoflow[torchx]` (torchx-nightly), which `make install` installs: without it
# these tests fail (run `make install`) rather than skip, so a broken install cannot pass unnoticed.
import torchx  # noqa: F401

from dinoflow.launch.torchx_components import train

ROOT = Path(__file__).resolve().parents[2]


def test_single_node_appdef():
    app = train("-S", "pretrain.train.max_steps=2", stage="pretrain", j="1x2")
    (role,) = app.roles
    script = role.args[1]
    assert role.entrypoint == "bash" and role.num_replicas == 1
    assert "--nproc_per_node 2" in script and "--rdzv_endpoint localhost:0" in script
    assert script.endswith("-m dinoflow pretrain -c params.yaml -S pretrain.train.max_steps=2")


def test_multi_node_appdef_rendezvous_on_rank0():
    app = train(stage="distill", j="2x8", gpu=8)
    (role,) = app.roles
    assert role.num_replicas == 2 and role.resource.gpu == 8 and role.port_map == {"c10d": 29500}
    assert "$${rank0_env}" not in role.args[1] and "${rank0_env}" in role.args[1]  # torchx fills the macro
    with pytest.raises(ValueError, match="NODESxPROCS"):
        train(j="2")
    with pytest.raises(ValueError, match="pretrain or distill"):
        train(stage="curate")


CLUSTER = dict(
    image="img:1",
    config="/app/params.yaml",
    shared_pvc="dinoflow-shared",
    workdir="/mnt/dinoflow-shared/torchx",
    tracking_uri="http://dinoflow-mlflow.dinoflow.svc.cluster.local:5000",
    s3_endpoint_url="http://dinoflow-minio.dinoflow.svc.cluster.local:9000",
    secrets="dinoflow-s3,dinoflow-mlflow",
)


def _volcano_job(app, namespace):
    """What torchx would submit to Kubernetes (its dry run; no API server here, so no server-side validation)."""
    from torchx.runner import get_runner

    info = get_runner().dryrun(
        app, "kubernetes", cfg={"queue": "default", "namespace": namespace, "validate_spec": False}
    )
    return info.request.resource


def test_kubernetes_job_runs_on_the_shared_volume_with_credentials_from_secrets():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".torchxconfig")
    namespace = cfg["kubernetes"]["namespace"]
    assert namespace == "kubeflow"  # the standalone overlay's pipeline namespace (k8s/overlays/standalone)
    job = _volcano_job(train(stage="pretrain", j="2x8", gpu=8, **CLUSTER), namespace)
    assert job["spec"]["schedulerName"] == "volcano" and len(job["spec"]["tasks"]) == 2
    for task in job["spec"]["tasks"]:
        pod = task["template"]
        (c,) = pod.spec.containers
        assert [e.secret_ref.name for e in c.env_from] == ["dinoflow-s3", "dinoflow-mlflow"]
        env = {e.name: e.value for e in c.env}
        assert (
            env["MLFLOW_TRACKING_URI"] == CLUSTER["tracking_uri"]
            and env["DINOFLOW_S3_ENDPOINT_URL"] == CLUSTER["s3_endpoint_url"]
        )
        assert not any(w in name for name in env for w in ("SECRET", "PASSWORD", "ACCESS_KEY", "AWS_"))
        mounts = {m.mount_path: m.name for m in c.volume_mounts}
        claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim}
        assert claims[mounts["/mnt/dinoflow-shared"]] == "dinoflow-shared"
        assert pod.spec.security_context.run_as_non_root is True
        script = c.command[-1]
        assert (
            script.startswith("mkdir -p '/mnt/dinoflow-shared/torchx/dinoflow-pretrain-")
            and "-c /app/params.yaml" in script
        )


def test_kubernetes_job_refuses_what_would_break_or_leak():
    with pytest.raises(ValueError, match="--secrets"):
        train(**{**CLUSTER, "secrets": ""})
    with pytest.raises(ValueError, match="absolute"):
        train(**{**CLUSTER, "workdir": "runs"})
    with pytest.raises(ValueError, match="--config must be absolute"):
        train(**{**CLUSTER, "config": "params.yaml"})
    with pytest.raises(ValueError, match="not on the shared volume"):
        train(**{**CLUSTER, "workdir": "/app/runs"})


@pytest.mark.slow
def test_torchx_local_cwd_runs_two_cpu_workers(tmp_path, monkeypatch):
    """`torchx run -s local_cwd` → torchrun with 2 workers → `python -m dinoflow pretrain` for 2 steps."""
    from dinoflow.config import load_config
    from dinoflow.stages import run_stage

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "params.yaml")
    if not (Path(cfg.demo.out_dir) / "ground_truth.json").exists():
        run_stage("demo-data", cfg)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    overrides = [
        "pretrain.data=data/demo/pool",
        "pretrain.train.max_steps=2",
        "pretrain.train.batch_size_per_rank=16",
        "pretrain.train.device=cpu",
        "pretrain.train.progress=false",
        "pretrain.out_dir=models/teacher",
    ]
    cmd = [
        str(Path(sys.executable).parent / "torchx"),
        "run",
        "-s",
        "local_cwd",
        "dinoflow.launch.torchx_components:train",
        "--stage",
        "pretrain",
        "-j",
        "1x2",
        "--config",
        str(ROOT / "params.yaml"),
        "--",
    ]
    for o in overrides:
        cmd.append(f"--set={o}")  # torchx rejects a repeated `-S` token, even after `--`
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "models" / "teacher" / "backbone.pth").exists()
