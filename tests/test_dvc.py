"""DVC: the project's dvc.yaml / .dvc/config, and repro → push (S3 on moto) → pull → exp run with the real CLI.

The behaviour tests run a tiny two-stage pipeline of their own in a temporary git repo so they
take seconds; the full pipeline with the real stages is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dinoflow import tracking
from dinoflow.stages import PIPELINE_ORDER, SECTIONS

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "DVC_NO_ANALYTICS": "1"}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, **GIT_ENV, **(env or {})})
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout + r.stderr


# ---------------------------------------------------------------- the project's files


def test_project_dvc_yaml_is_the_pipeline():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(spec) == PIPELINE_ORDER
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    outs: dict[str, str] = {}
    for name, stage in spec.items():
        assert stage["cmd"] == f"dinoflow {name}"
        section = SECTIONS[name]
        assert stage["params"] == [section] and section in params
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or dep in outs or dep.startswith("reports/"), f"{name}: unknown dep {dep}"
        for out in stage.get("outs", []):
            outs[out] = name
    # each stage consumes what the previous one produced
    assert "data/demo" in spec["curate"]["deps"] and "data/curated" in spec["pretrain"]["deps"]
    assert "models/teacher" in spec["distill"]["deps"] and "models/student" in spec["evaluate"]["deps"]
    assert "reports/eval.json" in spec["register"]["deps"]
    metrics = {next(iter(m)) for s in spec.values() for m in s.get("metrics", [])}
    assert metrics == {"reports/curation.json", "reports/eval.json", "reports/registry.json"}
    plots = {next(iter(p)) for s in spec.values() for p in s.get("plots", [])}
    assert plots == {"reports/pretrain.csv", "reports/distill.csv"}


@pytest.mark.slow
def test_project_dvc_config_and_dag_parse(tmp_path):
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    sh(["git", "init", "-q"], tmp_path)
    conf = sh([DVC, "config", "--list", "--project"], tmp_path)
    assert "cache.type=reflink,hardlink,symlink,copy" in conf and "core.remote=local" in conf
    remotes = sh([DVC, "remote", "list"], tmp_path)
    assert str(tmp_path / ".dvc-remote") in remotes
    dag = sh([DVC, "dag", "--md"], tmp_path)
    for edge in ("demo-data", "curate", "pretrain", "distill", "evaluate", "register"):
        assert f'"{edge}"' in dag


# ---------------------------------------------------------------- a tiny real pipeline


PREP = textwrap.dedent("""
    import json, pathlib, yaml
    p = yaml.safe_load(open("params.yaml"))["prep"]
    out = pathlib.Path("data/raw"); out.mkdir(parents=True, exist_ok=True)
    for i in range(p["n"]):
        (out / f"img_{i:03d}.bin").write_bytes(bytes([(i * 7 + j) % 256 for j in range(64)]))
    open("ran.log", "a").write("prep\\n")
""")
TRAIN = textwrap.dedent("""
    import json, pathlib, yaml
    p = yaml.safe_load(open("params.yaml"))["train"]
    total = sum(sum(f.read_bytes()) for f in sorted(pathlib.Path("data/raw").iterdir()))
    pathlib.Path("models").mkdir(exist_ok=True)
    pathlib.Path("models/model.txt").write_text(f"{total * p['lr']}\\n")
    json.dump({"score": total * p["lr"]}, open("metrics.json", "w"))
    open("ran.log", "a").write("train\\n")
""")
TINY_DVC = {
    "stages": {
        "prep": {"cmd": "python prep.py", "deps": ["prep.py"], "params": ["prep"], "outs": ["data/raw"]},
        "train": {"cmd": "python train.py", "deps": ["train.py", "data/raw"], "params": ["train"],
                  "outs": ["models"], "metrics": [{"metrics.json": {"cache": False}}]},
    }
}


def _ran(repo: Path) -> list[str]:
    log = repo / "ran.log"
    stages = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return stages


@pytest.mark.slow
def test_repro_push_pull_and_exp_run(tmp_path, s3_server):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "prep.py").write_text(PREP)
    (repo / "train.py").write_text(TRAIN)
    (repo / "params.yaml").write_text(yaml.safe_dump({"prep": {"n": 12}, "train": {"lr": 0.1}}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(TINY_DVC, sort_keys=False))
    (repo / ".gitignore").write_text("ran.log\n")
    s3_env = {k: v for k, v in s3_server.env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"}
    env = {**s3_env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's cache settings
    sh([DVC, "remote", "add", "-f", "-d", "s3", f"s3://{s3_server.bucket}/dvc-test"], repo)
    sh([DVC, "remote", "modify", "s3", "endpointurl", s3_server.endpoint], repo)

    sh([DVC, "repro"], repo, env)
    assert _ran(repo) == ["prep", "train"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    raw_md5 = next(o["md5"] for o in lock["prep"]["outs"] if o["path"] == "data/raw")
    assert tracking.dvc_md5(repo / "data" / "raw") == raw_md5, "run tags must carry the hash dvc.lock records"
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)

    sh([DVC, "push"], repo, env)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="dvc-test/")["Contents"]]
    assert any(k.endswith(raw_md5.replace(".dir", "")[2:] + ".dir") for k in keys)

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data" / "raw").exists() and not (clone / "models").exists()
    sh([DVC, "pull"], clone, env)
    for rel in ["models/model.txt", *(f"data/raw/img_{i:03d}.bin" for i in range(12))]:
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel

    # changing a train param reruns train only; prep is reused
    out = sh([DVC, "exp", "run", "-S", "train.lr=0.2"], repo, env)
    assert _ran(repo) == ["train"], out
    assert json.loads((repo / "metrics.json").read_text())["score"] == pytest.approx(
        2 * json.loads(sh(["git", "show", "HEAD:metrics.json"], repo))["score"])
    # changing a prep param reruns both
    sh([DVC, "exp", "run", "-S", "prep.n=13"], repo, env)
    assert _ran(repo) == ["prep", "train"]
