"""The one-time Jobs of k8s/, their scripts run as rendered:

- dinoflow-prepare-shared-volume really hands a root-owned 0755 directory to uid 10001 with no
  capability but CAP_CHOWN (setpriv restricts the bounding set, as the container's
  `capabilities: {drop: [ALL], add: [CHOWN]}` does), and a second run changes nothing;
- dinoflow-minio-users gives each MinIO user a policy on its own bucket only. No MinIO server can
  be installed here (it is not on the package registries this project uses), so `mc` is a
  STAND-IN that records its calls and keeps the policy documents; the policies are then read as
  an S3 policy evaluator would.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from k8s_build import K8S, build, find

needs_root = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv"),
    reason="changing a directory's owner needs root and util-linux setpriv (CI runs as root)",
)


def _script(kind: str, job: str, namespace_overlay: str = "standalone") -> tuple[str, dict]:
    docs = build(K8S / "overlays" / namespace_overlay)
    (container,) = find(docs, "Job", job)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["sh", "-c"]
    return container["args"][0], container


def _run_as_root_with(caps: str, script: str, volume: Path) -> subprocess.CompletedProcess:
    script = script.replace("/mnt/dinoflow-shared", str(volume))
    return subprocess.run(
        ["setpriv", f"--bounding-set=-all{caps}", "--inh-caps=-all", "--no-new-privs", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_root
def test_the_volume_preparation_hands_the_volume_to_the_steps_user_with_chown_only():
    script, container = _script("Job", "dinoflow-prepare-shared-volume")
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    top = Path(tempfile.mkdtemp(prefix="dinoflow-pvc-", dir="/tmp"))
    try:
        top.chmod(0o755)
        volume = top / "volume"
        volume.mkdir(mode=0o755)  # what a fresh RWX volume often looks like: root:root 0755
        no_caps = _run_as_root_with("", script, volume)
        assert no_caps.returncode != 0 and volume.stat().st_uid == 0  # without CAP_CHOWN it cannot
        done = _run_as_root_with(",+chown", script, volume)
        assert done.returncode == 0, done.stderr
        st = volume.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o770)
        write = subprocess.run(
            ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", "touch", str(volume / "ok")],
            capture_output=True,
            text=True,
        )
        assert write.returncode == 0, write.stderr  # the steps' user can write now
        again = _run_as_root_with(",+chown", script, volume)
        assert again.returncode == 0 and "already belongs to 10001:10001" in again.stdout
    finally:
        shutil.rmtree(top)


STUB_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$MC_LOG.$5.json"; fi
if [ "$1 $2 $3" = "admin policy attach" ] && [ -e "$MC_LOG.attached.$5" ]; then exit 1; fi
if [ "$1 $2 $3" = "admin policy attach" ]; then touch "$MC_LOG.attached.$5"; fi
if [ "$1 $2 $3" = "admin user info" ]; then echo "{\\"policyName\\":\\"$MC_POLICIES\\"}"; fi
exit 0
"""


def _allowed(policy: dict, action: str, resource: str) -> bool:
    from fnmatch import fnmatchcase

    return any(
        s["Effect"] == "Allow"
        and any(fnmatchcase(action, a) for a in s["Action"])
        and any(fnmatchcase(resource, r) for r in s["Resource"])
        for s in policy["Statement"]
    )


def test_each_minio_user_gets_its_own_bucket_only(tmp_path):
    script, container = _script("Job", "dinoflow-minio-users")
    (tmp_path / "bin").mkdir()
    mc = tmp_path / "bin" / "mc"
    mc.write_text(STUB_MC)
    mc.chmod(0o755)
    values = {e["name"]: e.get("value") for e in container["env"]}
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "MC_LOG": str(tmp_path / "mc.log"),
        "ENDPOINT": values["ENDPOINT"],
        "DATA_BUCKET": values["DATA_BUCKET"],
        "MLFLOW_ARTIFACTS": values["MLFLOW_ARTIFACTS"],
        "MC_POLICIES": "consoleAdmin,dinoflow-pipeline,dinoflow-mlflow",
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "rootpw",
        "PIPELINE_ACCESS_KEY": "pipe",
        "PIPELINE_SECRET_KEY": "pipe-secret",
        "MLFLOW_ACCESS_KEY": "mlf",
        "MLFLOW_SECRET_KEY": "mlf-secret",
    }
    script = script.replace("/tmp/", f"{tmp_path}/")
    for _ in range(2):  # idempotent: the second run finds the policies attached
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
    wrong = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env={**env, "MC_POLICIES": "readwrite"}
    )
    assert wrong.returncode != 0  # attach refused and the user lacks the policy: the Job fails
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert calls[0] == f"alias set dinoflow {values['ENDPOINT']} root rootpw"
    assert "mb --ignore-existing dinoflow/dinoflow-data" in calls and "mb --ignore-existing dinoflow/mlflow" in calls
    assert "admin user add dinoflow pipe pipe-secret" in calls and "admin user add dinoflow mlf mlf-secret" in calls
    pipeline = json.loads((tmp_path / "mc.log.dinoflow-pipeline.json").read_text())
    mlflow = json.loads((tmp_path / "mc.log.dinoflow-mlflow.json").read_text())
    assert _allowed(pipeline, "s3:PutObject", "arn:aws:s3:::dinoflow-data/curated/shard-0.tar")
    assert _allowed(pipeline, "s3:ListBucket", "arn:aws:s3:::dinoflow-data")
    for action, resource in [
        ("s3:DeleteObject", "arn:aws:s3:::mlflow/artifacts/1/model.onnx"),  # MLflow's artifacts
        ("s3:GetObject", "arn:aws:s3:::mlflow/artifacts/1/model.onnx"),
        ("s3:DeleteBucket", "arn:aws:s3:::dinoflow-data"),
        ("s3:PutBucketPolicy", "arn:aws:s3:::dinoflow-data"),
        ("admin:CreateUser", "arn:aws:s3:::*"),
    ]:
        assert not _allowed(pipeline, action, resource), (action, resource)
    assert _allowed(mlflow, "s3:PutObject", "arn:aws:s3:::mlflow/artifacts/1/model.onnx")
    assert _allowed(mlflow, "s3:CreateBucket", "arn:aws:s3:::mlflow")  # its create-bucket init container
    assert not _allowed(mlflow, "s3:GetObject", "arn:aws:s3:::dinoflow-data/curated/shard-0.tar")
