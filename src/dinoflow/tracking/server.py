"""Talking to the tracking server: probe it before work starts, bound every request, name failures.

MLflow's HTTP client retries a failed request 7 times with exponential backoff and a 120 s
timeout per attempt; with the server gone mid-run, the end of a stage (artifact uploads, the
queued asynchronous metrics, end_run) then waits for many minutes with no word. Every stage
bounds those numbers (`tracking.request_timeout_s`, `tracking.request_retries`) and turns what
is left into a DinoflowError that names the server.

The artifact store is not the server: a client that writes artifacts to S3 itself (an experiment
whose artifact location is `s3://…`) fails in boto, and a server that proxies them
(`--serve-artifacts`) answers 5xx for `mlflow-artifacts` requests while its own health check
passes. Either is named as the artifact store's fault, with its endpoint; only a server that no
longer answers is "lost".
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dinoflow.config.secrets import redact_urls as redact
from dinoflow.errors import DinoflowError
from dinoflow.tracking.workspace import resolve_store

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_CREDENTIAL_MARKERS = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoCredentialsError",
    "Unable to locate credentials",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AccessDenied",
    "PartialCredentialsError",
)
_STORE_MODULES = ("botocore", "boto3", "s3transfer")  # the S3 client's exceptions live here
_HEALTH_PROBE_S = 3.0
_LOST_MARKERS = (
    "Max retries exceeded",
    "Connection refused",
    "Read timed out",
    "RemoteDisconnected",
    "Connection aborted",
    "timed out",
)


def tracking_uri(cfg: Any = None) -> str:
    """`tracking.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else the local SQLite store; a relative
    local store inside a DVC temporary experiment workspace means the project's (`workspace`)."""
    explicit = getattr(getattr(cfg, "tracking", None), "tracking_uri", None)
    return resolve_store(explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def bound_http(tcfg: Any) -> None:
    """Cap MLflow's per-request timeout and retries for this process (read by MLflow on every request)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, getattr(tcfg, "request_timeout_s", 30))))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(getattr(tcfg, "request_retries", 3)))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a DinoflowError when an HTTP tracking server does not answer `/health`."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            if db.parent != Path("") and not db.parent.is_dir():
                raise DinoflowError(f"MLflow tracking database {db}: directory {db.parent} does not exist")
        return
    url = uri.rstrip("/") + "/health"
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
        f"MLflow tracking server {redact(uri)} is unreachable ({problem}). Start it, point MLFLOW_TRACKING_URI "
        f"(or tracking.tracking_uri) at a running server, or run with -S tracking.enabled=false."
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _mentions(exc: BaseException, markers: tuple[str, ...]) -> bool:
    return any(m in f"{type(e).__name__} {e}" for e in _chain(exc) for m in markers)


def _boto_fault(exc: BaseException) -> BaseException | None:
    """The first exception raised by boto (the S3 client) in the chain, if any."""
    for e in _chain(exc):
        if type(e).__module__.split(".")[0] in _STORE_MODULES:
            return e
    return None


def _s3_endpoint() -> str:
    return redact(os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "(AWS S3)")


def _answers(uri: str) -> bool:
    """Whether the HTTP tracking server at `uri` answers /health now (a short probe)."""
    try:
        check_tracking_server(uri, timeout_s=_HEALTH_PROBE_S)
        return True
    except DinoflowError:
        return False


def _store_error(what: str, exc: BaseException, uri: str | None) -> DinoflowError | None:
    """The artifact store's fault, when that is what `exc` is (see the module's docstring)."""
    boto = _boto_fault(exc)
    if boto is not None:
        return DinoflowError(
            f"{what}: the S3 artifact store {_s3_endpoint()} failed ({type(boto).__name__}: {redact(str(boto))[:300]}); "
            "the MLflow tracking server is not at fault. Check that the S3 endpoint (MLFLOW_S3_ENDPOINT_URL) is up "
            "and reachable from here, then rerun."
        )
    text = " ".join(f"{type(e).__name__} {e}" for e in _chain(exc))
    status = _http_status(exc)
    if status is not None and status < 500:  # refused logins and the like: named as such below
        return None
    if uri and uri.startswith(("http://", "https://")) and "mlflow-artifacts" in text and _answers(uri):
        return DinoflowError(
            f"{what}: the MLflow tracking server {redact(uri)} answers, but its artifact store failed "
            f"({redact(str(exc))[:300]}). The server proxies artifacts: check the storage behind it (its "
            "--artifacts-destination, e.g. the S3 endpoint) and the server's log, then rerun."
        )
    return None


def _http_status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        code = getattr(e, "get_http_status_code", None)
        if callable(code):
            return code()
    return None


@contextmanager
def named_errors(what: str, uri: str | None = None) -> Iterator[None]:
    """Turn credential failures, refused logins and a lost server into DinoflowErrors that say so."""
    try:
        yield
    except DinoflowError:
        raise
    except Exception as e:  # re-raised unless it can be named
        shown = redact(uri) if uri else "the MLflow tracking server"
        if _mentions(e, _CREDENTIAL_MARKERS):
            raise DinoflowError(
                f"{what}: the S3 artifact store rejected the credentials ({type(e).__name__}: {redact(str(e))[:300]}). "
                "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and MLFLOW_S3_ENDPOINT_URL) where the artifacts are "
                "written: this process, or the MLflow server when it runs with --serve-artifacts."
            ) from e
        store = _store_error(what, e, uri)
        if store is not None:
            raise store from e
        status = _http_status(e)
        if status == 403 and _mentions(e, ("Invalid Host header",)):
            raise DinoflowError(
                f"{what}: {shown} rejects the host name it is addressed by (HTTP 403 Invalid Host header). "
                "Start `mlflow server` with --allowed-hosts naming it (k8s/ does for its in-cluster names)."
            ) from e
        if status in (401, 403):
            raise DinoflowError(
                f"{what}: {shown} refused the request (HTTP {status}). Set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account on that server (Kubeflow: the dinoflow-mlflow secret)."
            ) from e
        if uri and _mentions(e, _LOST_MARKERS):
            raise DinoflowError(f"{what}: lost the MLflow tracking server {shown} ({redact(str(e))[:300]})") from e
        raise
