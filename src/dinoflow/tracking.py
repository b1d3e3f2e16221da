"""MLflow tracking for every stage (rank 0 only).

Interface used by the stages (keep it stable):
    with stage_run("pretrain", cfg) as run:   # run is None when tracking is off or off rank 0
        log_metrics({"loss": 1.0}, step=3)
        log_artifact("reports/pretrain.csv")

What one stage run records
- params: the stage's config section, flattened (`optim.base_lr`), secrets filtered out;
- artifacts: `config/resolved.yaml` (the whole validated config) plus whatever the stage logs;
- tags: `dinoflow.stage`, the git commit (`mlflow.source.git.commit`; `$DINOFLOW_GIT_COMMIT`
  where there is no .git, e.g. in a container), `dvc.md5.<input path>` = the DVC hash of each
  local input (the same value `dvc.lock` records: md5 of a file, `<md5>.dir` of a directory,
  computed with dvc-data), `kfp.run_id` from `$KFP_RUN_ID` (KFP does not export the run id to
  the container; the Kubeflow components pass `dsl.PIPELINE_JOB_ID_PLACEHOLDER` in that
  variable);
- inputs: `mlflow.log_input` of each input *data* directory as a `MetaDataset` — a reference
  (path/URI + DVC hash as digest), never a copy;
- system metrics (CPU, memory, GPU when present; needs psutil) when `tracking.system_metrics`.

One pipeline run = one parent run; each stage run is nested under it. The parent is chosen
in this order:
1. an MLflow run already active in this process (`with pipeline_parent_run(cfg): ...`);
2. `$DINOFLOW_PARENT_RUN_ID` (set by `pipeline_parent_run` for child processes: the demo
   driver, `dvc repro` started inside it, torchrun workers);
3. a pipeline key, `$DINOFLOW_PIPELINE_ID` or `kfp:$KFP_RUN_ID`: the parent tagged
   `dinoflow.pipeline_key=<key>` is found, or created by the first stage (Kubeflow pods share
   nothing but the tracking server, so the key lives there);
4. otherwise (plain `dvc repro` / `dinoflow <stage>` by hand) the state file
   `.dinoflow/pipeline_run.json` in the working directory: a stage joins the recorded parent
   when it comes later in the pipeline order than the last stage recorded there, and starts a
   new parent otherwise (rerunning `curate` after `evaluate` begins a new pipeline run).

Tracking URI: `tracking.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.
An HTTP server is probed (`GET /health`, short timeout) before the stage starts work, so an
unreachable server is a `DinoflowError`, not minutes of retries after an hour of training.
S3 credential failures while logging artifacts are reported as such.
Everything here is a no-op when `tracking.enabled` is false or `$RANK` is not 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dinoflow.errors import DinoflowError
from dinoflow.stages import PIPELINE_ORDER

ENV_PARENT_RUN_ID = "DINOFLOW_PARENT_RUN_ID"
ENV_PIPELINE_ID = "DINOFLOW_PIPELINE_ID"
ENV_KFP_RUN_ID = "KFP_RUN_ID"
ENV_GIT_COMMIT = "DINOFLOW_GIT_COMMIT"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STATE_FILE = Path(".dinoflow/pipeline_run.json")
TAG_PIPELINE_KEY = "dinoflow.pipeline_key"

# stage → config section holding its parameters
SECTION = {"demo-data": "demo", "curate": "curate", "pretrain": "pretrain", "distill": "distill",
           "evaluate": "evaluate", "register": "register"}

_SECRET_KEY = re.compile(r"secret|passw|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|auth", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
_CREDENTIAL_MARKERS = (
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoCredentialsError", "Unable to locate credentials",
    "ExpiredToken", "InvalidToken", "InvalidClientTokenId", "AccessDenied", "PartialCredentialsError",
)

_state: dict[str, Any] = {"run": None, "uri": None}  # the stage run this module opened (None: tracking off)


# ---------------------------------------------------------------- small helpers


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_enabled(cfg: Any) -> bool:
    """Tracking is on for rank 0 when `tracking.enabled` (default on)."""
    tracking = getattr(cfg, "tracking", None)
    return rank() == 0 and bool(getattr(tracking, "enabled", True))


def active_run() -> Any:
    """The stage run opened by `stage_run`, or None."""
    return _state["run"]


def tracking_uri(cfg: Any = None) -> str:
    explicit = getattr(getattr(cfg, "tracking", None), "tracking_uri", None)
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def redact(text: str) -> str:
    """Hide `user:password@` in URLs."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → `a.b.c` keys; lists become their JSON text; secret-looking keys are dropped."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(str(k)):
                continue
            out.update(flatten(v, key))
    else:
        value = json.dumps(tree) if isinstance(tree, (list, tuple)) else tree
        out[prefix] = redact(value) if isinstance(value, str) else value
    return out


def section_params(stage: str, cfg: Any) -> dict[str, Any]:
    section = getattr(cfg, SECTION.get(stage, stage.replace("-", "_")), None)
    if section is None:
        return {}
    tree = section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)
    params = flatten(tree)
    if hasattr(cfg, "seed"):
        params.setdefault("seed", cfg.seed)
    return params


def git_commit(cwd: str | Path = ".") -> tuple[str | None, bool | None]:
    """(commit, dirty) of the working tree, or `$DINOFLOW_GIT_COMMIT` (dirty unknown)."""
    if os.environ.get(ENV_GIT_COMMIT):
        return os.environ[ENV_GIT_COMMIT], None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None, None
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                            capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def dvc_md5(path: str | Path) -> str | None:
    """The hash DVC records for `path` in dvc.lock: md5 of a file, `<md5>.dir` for a directory.

    Computed with dvc-data (the library DVC itself uses), honouring no .dvcignore; None when the
    path does not exist or dvc-data is unavailable.
    """
    p = Path(path)
    if not p.exists():
        return None
    try:
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.db import HashFileDB
        from dvc_objects.fs.local import LocalFileSystem
        from dvc_objects.fs.memory import MemoryFileSystem
    except ImportError:
        return None
    odb = HashFileDB(MemoryFileSystem(), "/staging")
    _, _, obj = build(odb, str(p.resolve()), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


def stage_inputs(stage: str, cfg: Any) -> list[tuple[str, str]]:
    """(path or URI, kind) read by `stage`; kind is "data", "model" or "report"."""
    if stage == "curate":
        c = cfg.curate
        return [(s, "data") for s in [*c.sources, *([c.seeds] if c.seeds else []), *c.eval_sets]]
    if stage == "pretrain":
        return [(cfg.pretrain.data, "data")]
    if stage == "distill":
        return [(cfg.distill.data, "data"), (cfg.distill.teacher, "model")]
    if stage == "evaluate":
        return [*((m, "model") for m in cfg.evaluate.models.values()), (cfg.evaluate.demo_dir, "data")]
    if stage == "register":
        return [(cfg.register.eval_report, "report"), (cfg.register.model_path, "model")]
    return []


# ---------------------------------------------------------------- errors


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a DinoflowError when an HTTP tracking server does not answer `/health`."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if db.parent != Path("") and not db.parent.is_dir():
                raise DinoflowError(f"MLflow tracking database {db}: directory {db.parent} does not exist")
        return
    url = uri.rstrip("/") + "/health"
    shown = redact(uri)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code} {e.reason}"
    except (OSError, ValueError) as e:
        problem = str(getattr(e, "reason", e))
    raise DinoflowError(
        f"MLflow tracking server {shown} is unreachable ({problem}). Start it, point MLFLOW_TRACKING_URI "
        f"(or tracking.tracking_uri) at a running server, or run with -S tracking.enabled=false."
    )


def _credential_problem(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__} {e}"
        if any(m in text for m in _CREDENTIAL_MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def named_errors(what: str, uri: str | None = None) -> Iterator[None]:
    """Turn S3 credential failures and lost connections into DinoflowErrors that say so."""
    try:
        yield
    except DinoflowError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless we can name it
        if _credential_problem(e):
            raise DinoflowError(
                f"{what}: the S3 artifact store rejected the credentials ({type(e).__name__}: {redact(str(e))[:300]}). "
                "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and MLFLOW_S3_ENDPOINT_URL) where the artifacts are "
                "written: this process, or the MLflow server when it runs with --serve-artifacts."
            ) from e
        text = str(e)
        if uri and ("Max retries exceeded" in text or "Connection refused" in text):
            raise DinoflowError(f"{what}: lost the MLflow tracking server {redact(uri)} ({text[:200]})") from e
        raise


# ---------------------------------------------------------------- runs


def _client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except Exception:  # created concurrently by another stage or rank
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _context_tags() -> dict[str, str]:
    tags: dict[str, str] = {}
    commit, dirty = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["dinoflow.git.commit"] = commit
        if dirty is not None:
            tags["dinoflow.git.dirty"] = str(dirty).lower()
    if os.environ.get(ENV_KFP_RUN_ID):
        tags["kfp.run_id"] = os.environ[ENV_KFP_RUN_ID]
    if os.environ.get("KFP_POD_NAME"):
        tags["kfp.pod_name"] = os.environ["KFP_POD_NAME"]
    if os.environ.get("WORLD_SIZE"):
        tags["dinoflow.world_size"] = os.environ["WORLD_SIZE"]
    return tags


def _pipeline_key() -> str | None:
    if os.environ.get(ENV_PIPELINE_ID):
        return os.environ[ENV_PIPELINE_ID]
    if os.environ.get(ENV_KFP_RUN_ID):
        return f"kfp:{os.environ[ENV_KFP_RUN_ID]}"
    return None


def _create_parent(client: Any, exp_id: str, key: str | None) -> str:
    tags = {**_context_tags(), "dinoflow.role": "pipeline"}
    if key:
        tags[TAG_PIPELINE_KEY] = key
    name = f"pipeline-{key}" if key else time.strftime("pipeline-%Y%m%d-%H%M%S")
    return client.create_run(exp_id, tags=tags, run_name=name).info.run_id


def _parent_from_key(client: Any, exp_id: str, key: str) -> str:
    quoted = key.replace("'", "\\'")
    found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_PIPELINE_KEY}` = '{quoted}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else _create_parent(client, exp_id, key)


def _parent_from_state(client: Any, exp_id: str, uri: str, stage: str) -> str:
    order = PIPELINE_ORDER.index(stage) if stage in PIPELINE_ORDER else len(PIPELINE_ORDER)
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        state = {}
    run_id = state.get("run_id")
    if (run_id and state.get("tracking_uri") == uri and state.get("experiment_id") == exp_id
            and order > int(state.get("last_stage_index", len(PIPELINE_ORDER)))):
        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                return run_id
        except Exception:  # noqa: BLE001 - a deleted/unknown run: start a new pipeline run
            pass
    return _create_parent(client, exp_id, None)


def _record_state(run_id: str, uri: str, exp_id: str, stage: str) -> None:
    from dinoflow.io import atomic_write_text

    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    ignore = STATE_FILE.parent / ".gitignore"
    if not ignore.exists():  # the directory ignores itself: local state, never committed
        ignore.write_text("*\n")
    index = PIPELINE_ORDER.index(stage) if stage in PIPELINE_ORDER else len(PIPELINE_ORDER)
    atomic_write_text(STATE_FILE, json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment_id": exp_id,
                                              "last_stage": stage, "last_stage_index": index}))


def _log_inputs(stage: str, cfg: Any, hash_inputs: bool) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    tags: dict[str, str] = {}
    for path, kind in stage_inputs(stage, cfg):
        local = "://" not in path
        digest = dvc_md5(path) if (local and hash_inputs) else None
        if digest:
            tags[f"dvc.md5.{path}"[:250]] = digest
        elif not local:
            tags[f"dinoflow.input.{path}"[:250]] = redact(path)
        if kind != "data" or (local and not Path(path).exists()):
            continue
        with warnings.catch_warnings():  # local paths match two equivalent registered source classes
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(path).resolve()) if local else path)
        ds = MetaDataset(source, name=Path(path).name or path, digest=(digest or "")[:32] or None)
        mlflow.log_input(ds, context=stage)
    if tags:
        mlflow.set_tags(tags)


@contextmanager
def stage_run(stage: str, cfg: Any, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage (nested under the pipeline run); yields it, or None when off.

    Raises DinoflowError before the stage does any work when the tracking server is unreachable
    or the artifact store rejects the credentials (the resolved config is logged first).
    """
    if not is_enabled(cfg) or _state["run"] is not None:
        yield None
        return
    import mlflow

    from dinoflow.config import dump_config

    tcfg = cfg.tracking
    uri = tracking_uri(cfg)
    check_tracking_server(uri, getattr(tcfg, "probe_timeout_s", 5.0))
    with named_errors(f"MLflow run for stage {stage!r}", uri):
        client = _client(uri)
        exp_id = _experiment_id(client, tcfg.experiment)
        outer = mlflow.active_run()
        state_managed = False
        if outer is not None:
            parent = outer.info.run_id
        elif os.environ.get(ENV_PARENT_RUN_ID):
            parent = os.environ[ENV_PARENT_RUN_ID]
        elif (key := _pipeline_key()) is not None:
            parent = _parent_from_key(client, exp_id, key)
        else:
            parent = _parent_from_state(client, exp_id, uri, stage)
            state_managed = True
        tags = {**_context_tags(), "dinoflow.stage": stage}
        run = mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent, nested=outer is not None,
                               tags=tags, log_system_metrics=bool(getattr(tcfg, "system_metrics", True)))
    if state_managed:
        _record_state(parent, uri, exp_id, stage)
    _state["run"], _state["uri"] = run, uri
    status = "FAILED"
    try:
        with named_errors(f"logging the setup of stage {stage!r}", uri):
            mlflow.log_text(dump_config(cfg), "config/resolved.yaml")  # first artifact: probes the store
            log_params(params if params is not None else section_params(stage, cfg))
            _log_inputs(stage, cfg, bool(getattr(tcfg, "hash_inputs", True)))
        yield run
        status = "FINISHED"
    finally:
        _state["run"] = None
        try:
            mlflow.end_run(status=status)
            if state_managed:  # nobody else closes a state-file parent: it ends with its last stage
                client.set_terminated(parent, status=status)
        except Exception:  # noqa: BLE001 - never mask the stage's own exception
            if status == "FINISHED":
                raise


@contextmanager
def pipeline_parent_run(cfg: Any, name: str = "pipeline") -> Iterator[Any]:
    """The parent run of one pipeline run, for a driver (demo, `dinoflow pipeline run`).

    Stage runs in this process nest under it (it is the active run); child processes
    (`dvc repro`, `dinoflow <stage>`, torchrun) find it through `$DINOFLOW_PARENT_RUN_ID`.
    Yields the run, or None when tracking is off.
    """
    if not is_enabled(cfg):
        yield None
        return
    import mlflow

    uri = tracking_uri(cfg)
    check_tracking_server(uri, getattr(cfg.tracking, "probe_timeout_s", 5.0))
    with named_errors("MLflow pipeline run", uri):
        client = _client(uri)
        exp_id = _experiment_id(client, cfg.tracking.experiment)
        tags = {**_context_tags(), "dinoflow.role": "pipeline"}
        if (key := _pipeline_key()) is not None:
            tags[TAG_PIPELINE_KEY] = key
        run = mlflow.start_run(experiment_id=exp_id, run_name=name, tags=tags)
    previous = os.environ.get(ENV_PARENT_RUN_ID)
    os.environ[ENV_PARENT_RUN_ID] = run.info.run_id
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if previous is None:
            os.environ.pop(ENV_PARENT_RUN_ID, None)
        else:
            os.environ[ENV_PARENT_RUN_ID] = previous
        mlflow.end_run(status=status)


# ---------------------------------------------------------------- logging inside a stage run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics at `step` (asynchronously: training does not wait for the server)."""
    if _state["run"] is None:
        return
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if clean:
        mlflow.log_metrics(clean, step=step, synchronous=False)


def log_params(params: dict[str, Any]) -> None:
    """Log params (flattened; secret-looking keys dropped, URL passwords redacted)."""
    if _state["run"] is None or not params:
        return
    import mlflow

    flat = flatten(params)
    mlflow.log_params({k: (v if v is None or isinstance(v, (int, float, bool)) else str(v)[:6000]) for k, v in flat.items()})


def set_tags(tags: dict[str, Any]) -> None:
    if _state["run"] is None:
        return
    import mlflow

    mlflow.set_tags({k: redact(str(v)) for k, v in tags.items() if not is_secret_key(k)})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file, or a directory's files, under `artifact_path`; missing paths are an error."""
    if _state["run"] is None:
        return
    import mlflow

    p = Path(path)
    if not p.exists():
        raise DinoflowError(f"cannot log artifact {p}: it does not exist")
    with named_errors(f"logging artifact {p}", _state["uri"]):
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path)
        else:
            mlflow.log_artifact(str(p), artifact_path)


def log_model(backbone_path: str | Path, name: str, cfg: Any, registered_model_name: str | None = None) -> Any:
    """Log a backbone as an embedding pyfunc model (see `dinoflow.mlflow_model`); returns ModelInfo or None."""
    if _state["run"] is None:
        return None
    from dinoflow.mlflow_model import log_embedding_model

    with named_errors(f"logging model {name!r}", _state["uri"]):
        return log_embedding_model(backbone_path, name=name, cfg=cfg, registered_model_name=registered_model_name)
