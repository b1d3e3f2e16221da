"""DVC: the project's dvc.yaml / .dvc/config, and repro → push (S3 on moto) → pull → exp run with the real CLI.

The behaviour tests run a tiny two-stage pipeline of their own in a temporary git repo so they
take seconds; the full pipeline with the real stages is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from dinoflow import tracking
from dinoflow.config.stages import PIPELINE_ORDER, SECTIONS

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
    "DVC_NO_ANALYTICS": "1",
}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **GIT_ENV, **(env or {})}
    )
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout + r.stderr


# ---------------------------------------------------------------- the project's files


def test_project_dvc_yaml_is_the_pipeline():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(spec) == list(PIPELINE_ORDER)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    outs: dict[str, str] = {}
    for name, stage in spec.items():
        assert stage["cmd"] == f"dinoflow {name}"
        section = SECTIONS[name]
        # the top-level seed is every seeded stage's seed (tests/test_config_seed.py)
        assert stage["params"] in ([section], ["seed", section]) and section in params
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
    # DVC deletes a stage's outs before it runs: training checkpoints must live elsewhere to be resumed
    for name in ("pretrain", "distill"):
        ckpt = Path(params[name]["train"]["checkpoint_dir"])
        assert not any(ckpt == Path(o) or Path(o) in ckpt.parents for o in spec[name]["outs"]), (name, ckpt)


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
        "train": {
            "cmd": "python train.py",
            "deps": ["train.py", "data/raw"],
            "params": ["train"],
            "outs": ["models"],
            "metrics": [{"metrics.json": {"cache": False}}],
        },
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
    keys = [
        o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="dvc-test/")["Contents"]
    ]
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
        2 * json.loads(sh(["git", "show", "HEAD:metrics.json"], repo))["score"]
    )
    # changing a prep param reruns both
    sh([DVC, "exp", "run", "-S", "prep.n=13"], repo, env)
    assert _ran(repo) == ["prep", "train"]


# ---------------------------------------------------------------- the real pretrain stage under DVC


def _descendants(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # it exited meanwhile
        return kids
    for tid in tids:
        try:
            found = [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
        for k in found:
            kids += [k, *_descendants(k)]
    return kids


def _stage_pid(dvc_pid: int) -> int | None:
    """The `dinoflow pretrain` process DVC started (not DVC itself, not the shell around it)."""
    for pid in _descendants(dvc_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"dinoflow") for a in argv[:2]) and b"pretrain" in argv:
            return pid
    return None


def _csv_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.slow
def test_preempted_pretrain_fails_dvc_repro_and_the_rerun_resumes(tmp_path):
    """SIGTERM to the stage under `dvc repro`: the stage exits non-zero, so DVC records nothing;
    its checkpoint lives outside the outs DVC deletes, so the next `dvc repro` resumes it; and
    `dvc exp run -S` with a changed learning rate starts a fresh run rather than being refused."""
    from PIL import Image

    from dinoflow.demo.sources import mnist_split

    repo = tmp_path / "repo"
    (repo / "data" / "pool").mkdir(parents=True)
    x, _, _, _ = mnist_split()
    for i in range(64):
        Image.fromarray(x[i]).save(repo / "data" / "pool" / f"img_{i:03d}.png")
    params = {
        "pretrain": {
            "data": "data/pool",
            "out_dir": "models/teacher",
            "report_csv": "reports/pretrain.csv",
            "model": {"arch": "vit_pico", "patch_size": 7, "img_size": 28, "layerscale_init": 0.1},
            "head": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
            "crops": {"global_size": 28, "local_size": 14, "n_local": 2},
            "optim": {"base_lr": 0.01, "warmup_epochs": 1, "freeze_last_layer_epochs": 0},
            "loss": {"warmup_teacher_temp_epochs": 1},
            "train": {
                "epochs": 3,
                "epoch_length": 10,
                "batch_size_per_rank": 8,
                "checkpoint_every": 1000,
                "log_every": 1,
                "progress": False,
                "checkpoint_dir": "checkpoints",
            },
        },
        "tracking": {"enabled": False},
    }
    stage = {
        "cmd": "dinoflow pretrain",
        "deps": ["data/pool"],
        "params": ["pretrain"],
        "outs": ["models/teacher"],
        "plots": [{"reports/pretrain.csv": {"cache": False}}],
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pretrain": stage}}, sort_keys=False))
    (repo / ".gitignore").write_text("/checkpoints/\n")
    env = {
        **os.environ,
        **GIT_ENV,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)

    proc = subprocess.Popen(
        [DVC, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    csv_path = repo / "reports" / "pretrain.csv"
    deadline = time.time() + 240
    while time.time() < deadline and _csv_rows(csv_path) < 3 and proc.poll() is None:
        time.sleep(0.05)
    pid = _stage_pid(proc.pid)
    assert pid is not None and proc.poll() is None, "the stage ended before it could be preempted"
    os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0, out[-3000:]
    assert "stopped by SIGTERM" in out, out[-3000:]
    lock = repo / "dvc.lock"
    assert not lock.exists() or "pretrain" not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    assert not (repo / "models" / "teacher" / "backbone.pth").exists()
    latest = list((repo / "checkpoints").glob("pretrain-*/latest"))
    assert len(latest) == 1
    stopped_at = int(latest[0].read_text().strip().removeprefix("step_"))
    assert 3 <= stopped_at < 30

    out = sh([DVC, "repro"], repo, env)  # DVC deletes models/teacher first; the checkpoint is elsewhere
    assert f'"resumed_from": {stopped_at}' in out and '"step": 30' in out, out[-3000:]
    assert [int(r.split(",")[0]) for r in csv_path.read_text().splitlines()[1:]] == list(range(1, 31))
    assert "pretrain" in yaml.safe_load(lock.read_text())["stages"]
    assert not latest[0].exists(), "a completed schedule drops its checkpoints"
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pretrain"], repo)

    out = sh([DVC, "exp", "run", "-S", "pretrain.optim.base_lr=0.02"], repo, env)
    assert '"resumed_from": 0' in out and '"step": 30' in out, out[-3000:]
    trained = yaml.safe_load((repo / "models" / "teacher" / "train_config.yaml").read_text())
    assert trained["optim"]["base_lr"] == 0.02


# ---------------------------------------------------------------- defaults in config modules


def _standin_cmd(stage: dict) -> str:
    """A command that produces the stage's outs, metrics and plots in no time (the project's deps,
    params and outs are kept: only what runs is replaced)."""
    outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
    files = [next(iter(m)) for key in ("metrics", "plots") for m in stage.get(key, [])]
    code = ["import pathlib"]
    code += [
        f"pathlib.Path({o!r}).mkdir(parents=True, exist_ok=True); pathlib.Path({o!r}, 'x').write_text('x')"
        for o in outs
    ]
    code += [
        f"pathlib.Path({f!r}).parent.mkdir(parents=True, exist_ok=True); pathlib.Path({f!r}).write_text("
        f"{'step,v' + chr(10) + '1,1' + chr(10) if f.endswith('.csv') else '{}'!r})"
        for f in files
    ]
    return f'{sys.executable} -c "{"; ".join(code)}"'


# (config module, a default in it, the changed default) → the stages whose deps change
DEFAULT_EDITS = {
    "config/train.py": ("base_lr: float = Field(0.004,", "base_lr: float = Field(0.005,", {"pretrain", "distill"}),
    "config/data.py": ("n_junk: int = Field(60,", "n_junk: int = Field(61,", {"demo-data", "curate"}),
    "config/release.py": (
        "temperature: float = Field(0.07,",
        "temperature: float = Field(0.08,",
        {"evaluate", "register"},
    ),
    "config/base.py": ("DEFAULT_SEED = 0", "DEFAULT_SEED = 1", set(PIPELINE_ORDER)),
}


@pytest.mark.slow
def test_a_changed_default_in_the_config_reruns_the_stages_it_affects(tmp_path):
    """params.yaml lists only overrides; a default changed in the config modules must still make
    `dvc status` report the stages that read it (the project's dvc.yaml, stand-in commands)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage in spec["stages"].values():
        stage["cmd"] = _standin_cmd(stage)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    sh([DVC, "repro", "-q"], repo)
    assert json.loads(sh([DVC, "status", "--json", "-q"], repo) or "{}") == {}

    config_dir = repo / "src" / "dinoflow"
    for module, (old, new, expected) in DEFAULT_EDITS.items():
        path = config_dir / module
        original = path.read_text()
        assert original.count(old) == 1, f"{module}: the default to edit ({old!r}) is not where the test expects it"
        path.write_text(original.replace(old, new))
        status = json.loads(sh([DVC, "status", "--json"], repo))
        changed = {
            name
            for name, what in status.items()
            if any(f"src/dinoflow/{module}" in (w.get("changed deps") or {}) for w in what if isinstance(w, dict))
        }
        assert changed == expected, (module, status)
        path.write_text(original)
    assert json.loads(sh([DVC, "status", "--json"], repo) or "{}") == {}

    # the top-level seed is every seeded stage's seed: changing it reruns exactly those stages
    params = repo / "params.yaml"
    original = params.read_text()
    assert original.count("\nseed: 0\n") == 1
    params.write_text(original.replace("\nseed: 0\n", "\nseed: 1\n"))
    status = json.loads(sh([DVC, "status", "--json"], repo))
    changed = {
        name
        for name, what in status.items()
        if any("seed" in str((w.get("changed deps") or {}).get("params.yaml")) for w in what if isinstance(w, dict))
    }
    assert changed == {"demo-data", "curate", "pretrain", "distill", "evaluate"}, status
    params.write_text(original)
