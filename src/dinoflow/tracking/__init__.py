"""MLflow tracking for every stage (rank 0 only), split by concern:

- `runs`: `stage_run` / `pipeline_parent_run` — one run per stage under one parent per pipeline run;
- `parent`: which run is the parent (driver, environment, Kubeflow run id, or a user state file);
- `log`: `log_metrics`, `log_params`, `set_tags`, `log_artifact` inside a stage run;
- `inputs`, `provenance`: input hashes, dataset references, the git commit;
- `server`: the tracking URI, bounded HTTP, the health probe and named errors;
- `workspace`: a relative local store seen from DVC's temporary experiment workspaces;
- `unclosed`: runs left RUNNING by a lost server, ended FAILED at the next start;
- `current`: the open stage run (a ContextVar).
Secret redaction lives in `dinoflow.config.secrets`; what each stage reads lives in `dinoflow.config.stages`.

Interface used by the stages:
    with stage_run("pretrain", cfg) as run:   # run is None when tracking is off or off rank 0
        log_metrics({"loss": 1.0}, step=3)
        log_artifact("reports/pretrain.csv")
"""

from dinoflow.config.secrets import flatten, is_secret_key
from dinoflow.config.secrets import redact_urls as redact
from dinoflow.tracking.current import active_run, is_enabled, rank
from dinoflow.tracking.log import log_artifact, log_metrics, log_params, set_tags
from dinoflow.tracking.provenance import dvc_md5, git_commit
from dinoflow.tracking.runs import finish_pipeline_run, pipeline_parent_run, stage_run
from dinoflow.tracking.server import check_tracking_server, named_errors, tracking_uri

__all__ = [
    "active_run",
    "check_tracking_server",
    "dvc_md5",
    "finish_pipeline_run",
    "flatten",
    "git_commit",
    "is_enabled",
    "is_secret_key",
    "log_artifact",
    "log_metrics",
    "log_params",
    "named_errors",
    "pipeline_parent_run",
    "rank",
    "redact",
    "set_tags",
    "stage_run",
    "tracking_uri",
]
