"""Opening and closing runs: one run per stage, nested under one parent run per pipeline run.

What one stage run records: params (its config section, flattened, secrets dropped), the whole
validated config as `config/resolved.yaml` (URL credentials redacted), the git commit, the
pipeline run id and pod, the DVC hash of each local input and a dataset reference to each input
data set, system metrics when `tracking.system_metrics`, and whatever the stage logs itself.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dinoflow.config import dump_config, pipeline_env
from dinoflow.config.secrets import redact_urls as redact
from dinoflow.config.stages import section_params, stage_inputs
from dinoflow.errors import DinoflowError
from dinoflow.tracking.current import CURRENT, OpenRun, is_enabled
from dinoflow.tracking.inputs import log_inputs
from dinoflow.tracking.log import log_params
from dinoflow.tracking.parent import (
    TAG_PIPELINE_RUN_ID,
    parent_for_pipeline_run,
    parent_tags,
    record_state,
    resolve_parent,
)
from dinoflow.tracking.provenance import git_commit
from dinoflow.tracking.server import bound_http, check_tracking_server, named_errors, tracking_uri
from dinoflow.tracking.unclosed import close_remembered, remember

TAG_STAGE = "dinoflow.stage"


def context_tags() -> dict[str, str]:
    """Tags every run of this process carries: commit, pipeline run, pod, world size."""
    tags: dict[str, str] = {}
    commit, dirty = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["dinoflow.git.commit"] = commit
        if dirty is not None:
            tags["dinoflow.git.dirty"] = str(dirty).lower()
    if pipeline_env.pipeline_run_id():
        tags[TAG_PIPELINE_RUN_ID] = pipeline_env.pipeline_run_id()  # type: ignore[assignment]
    pod = pipeline_env.kfp_pod()
    if pod:
        tags["kfp.pod_name"] = pod[0]
    if os.environ.get("WORLD_SIZE"):
        tags["dinoflow.world_size"] = os.environ["WORLD_SIZE"]
    return tags


def _client(uri: str) -> Any:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """A local SQLite store keeps its artifacts beside the database, not in the working directory
    (MLflow's default `./mlruns`), which may be read-only or another project's."""
    if not uri.startswith("sqlite:///"):
        return None
    return str((Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts"))


def _experiment_id(client: Any, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except Exception:  # created concurrently by another stage or rank
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _connect(cfg: Any) -> tuple[Any, str, str]:
    """(client, experiment id, uri), after bounding HTTP and probing the server."""
    tcfg = cfg.tracking
    uri = tracking_uri(cfg)
    bound_http(tcfg)
    check_tracking_server(uri, tcfg.probe_timeout_s)
    with named_errors("connecting to MLflow", uri):
        client = _client(uri)
        exp_id = _experiment_id(client, tcfg.experiment, uri)
    close_remembered(client, uri)  # runs an earlier stage left RUNNING when it lost this server
    return client, exp_id, uri


def _status_of(exc: BaseException | None) -> str:
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"


def _close(what: str, uri: str, status: str, closing: list[tuple[str, Any]], failed: bool) -> None:
    """End runs ((run id, closer) pairs); a failure to end them is a named error unless the stage
    already failed. Runs left open are remembered and ended FAILED by the next start (`unclosed`)."""
    left = [run_id for run_id, _ in closing]
    try:
        with named_errors(f"finishing {what}", uri):
            for run_id, close in closing:
                close(status)
                left.remove(run_id)
    except DinoflowError as e:
        remember(uri, left, what)
        if not failed:
            raise DinoflowError(
                f"{e}. The stage's outputs are complete on disk; only their tracking is not "
                "(the next stage to reach the server marks the run FAILED)."
            ) from e
    except Exception:
        remember(uri, left, what)
        raise


def _log_setup(stage: str, cfg: Any, params: dict[str, Any] | None, uri: str) -> None:
    import mlflow

    with named_errors(f"logging the setup of stage {stage!r}", uri):
        mlflow.log_text(redact(dump_config(cfg)), "config/resolved.yaml")  # first artifact: probes the store
        log_params(params if params is not None else section_params(stage, cfg))
        log_inputs(stage, stage_inputs(stage, cfg), bool(cfg.tracking.hash_inputs))


@contextmanager
def stage_run(stage: str, cfg: Any, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage (nested under its pipeline run); yields it, or None when off.

    Raises DinoflowError before the stage does any work when the server is unreachable, refuses
    the credentials, or the artifact store rejects them; and after it, when the server was lost.
    """
    if not is_enabled(cfg) or CURRENT.get() is not None:
        yield None
        return
    import mlflow

    client, exp_id, uri = _connect(cfg)
    with named_errors(f"opening the MLflow run of stage {stage!r}", uri):
        outer = mlflow.active_run()
        context = context_tags()
        parent = resolve_parent(client, exp_id, uri, stage, context, outer.info.run_id if outer else None)
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=stage,
            parent_run_id=parent.run_id,
            nested=outer is not None,
            tags={**context, TAG_STAGE: stage},
            log_system_metrics=bool(cfg.tracking.system_metrics),
        )
    record_state(parent, stage)
    token = CURRENT.set(OpenRun(run, uri))
    closing = [(run.info.run_id, lambda status: mlflow.end_run(status=status))]
    if parent.state_file is not None:  # nobody else ends a state-file parent: it ends with its last stage
        closing.append((parent.run_id, lambda status: client.set_terminated(parent.run_id, status=status)))
    error: BaseException | None = None
    try:
        _log_setup(stage, cfg, params, uri)
        yield run
    except BaseException as e:
        error = e
        raise
    finally:
        CURRENT.reset(token)
        _close(f"the MLflow run of stage {stage!r}", uri, _status_of(error), closing, failed=error is not None)


@contextmanager
def pipeline_parent_run(cfg: Any, name: str = "pipeline") -> Iterator[Any]:
    """The parent run of one pipeline run, for a driver (`dinoflow demo`, `dinoflow pipeline run`).

    Stage runs in this process nest under it; child processes find it through
    `$DINOFLOW_PARENT_RUN_ID`. Yields the run, or None when tracking is off.
    """
    if not is_enabled(cfg):
        yield None
        return
    import mlflow

    client, exp_id, uri = _connect(cfg)
    with named_errors("opening the MLflow pipeline run", uri):
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=pipeline_env.pipeline_run_name() or name,
            tags=parent_tags(context_tags(), pipeline_env.pipeline_run_id()),
        )
    previous = os.environ.get(pipeline_env.PARENT_RUN_ID)
    os.environ[pipeline_env.PARENT_RUN_ID] = run.info.run_id
    error: BaseException | None = None
    try:
        yield run
    except BaseException as e:
        error = e
        raise
    finally:
        if previous is None:
            os.environ.pop(pipeline_env.PARENT_RUN_ID, None)
        else:
            os.environ[pipeline_env.PARENT_RUN_ID] = previous
        _close(
            "the MLflow pipeline run",
            uri,
            _status_of(error),
            [(run.info.run_id, lambda s: mlflow.end_run(status=s))],
            failed=error is not None,
        )


def finish_pipeline_run(cfg: Any, status: str) -> str | None:
    """End the parent run of `$DINOFLOW_PIPELINE_RUN_ID` (a Kubeflow exit handler); returns its id."""
    run_id = pipeline_env.pipeline_run_id()
    if not is_enabled(cfg) or not run_id:
        return None

    client, exp_id, uri = _connect(cfg)
    with named_errors("finishing the MLflow pipeline run", uri):
        parent = parent_for_pipeline_run(client, exp_id, run_id, context_tags())
        name = pipeline_env.pipeline_run_name()
        if name:
            client.set_tag(parent, "mlflow.runName", name)
        client.set_terminated(parent, status=status)
    return parent
