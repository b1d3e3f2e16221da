"""Real services for tests, started once per session on 127.0.0.1: S3 (moto_server), PostgreSQL,
and an MLflow tracking server that stores runs in PostgreSQL and artifacts in S3.

Fixtures (session scope; import them from a conftest):
    s3_server       -> S3Server(endpoint, bucket, env)       a moto S3 endpoint with one bucket
    postgres_db     -> PostgresDB(uri) or pytest.skip(reason) a throw-away PostgreSQL cluster
    mlflow_server   -> MlflowServer(uri, backend, backend_reason, ...)
                       PostgreSQL backend when it can start, else SQLite (the reason is recorded
                       in `backend_reason` and printed in the pytest summary)

Only the MLflow server process gets the (dummy) S3 credentials; test clients talk to it over
HTTP and never see them (`--serve-artifacts`).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

BIN = Path(sys.executable).parent  # the venv's bin: mlflow, moto_server, dvc
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SERVICE_NOTES: list[str] = []  # printed by the root conftest's terminal summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail with the service log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"service for {url} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s:\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group we started (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


# ---------------------------------------------------------------- S3 (moto)


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)  # what a client needs: endpoint + dummy creds

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        )


def start_moto(workdir: Path, bucket: str | None = "dinoflow", require_auth: bool = False) -> S3Server:
    """A moto S3 endpoint. `require_auth=True` makes it check credentials (every dummy key is rejected)."""
    port = free_port()
    log = workdir / f"moto-{port}.log"
    env = {**os.environ, **DUMMY_AWS}
    if require_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(f"{endpoint}/moto-api/", 30, proc, log)
    server = S3Server(
        endpoint, bucket or "", proc, {**DUMMY_AWS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    )
    if bucket and not require_auth:
        server.client().create_bucket(Bucket=bucket)
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    stop(server.proc)


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresDB:
    uri: str
    datadir: Path
    port: int


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def start_postgres(workdir: Path) -> PostgresDB:
    """initdb + pg_ctl start in a temp dir on a free port; as the `postgres` user when we are root.

    Raises RuntimeError with the reason when PostgreSQL is absent or cannot start.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl; `apt-get install postgresql`)")
    prefix: list[str] = []
    datadir = workdir / "pgdata"
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no `postgres` user to run initdb as") from None
        if not runuser:
            raise RuntimeError("running as root and `runuser` is missing")
        prefix = [runuser, "-u", "postgres", "--"]
        os.chmod(workdir, 0o755)
        for p in [workdir, *workdir.parents]:  # postgres must be able to reach its data dir
            if p == Path("/"):
                break
            os.chmod(p, os.stat(p).st_mode | 0o111)
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
    port = free_port()
    run = lambda cmd: subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run([initdb, "-D", str(datadir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
    if r.returncode:
        raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    r = run([pg_ctl, "-D", str(datadir), "-o", opts, "-l", str(datadir / "server.log"), "-w", "-t", "60", "start"])
    if r.returncode:
        raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-500:]}")
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE mlflow")
    conn.close()
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; the project ships psycopg2-binary
    return PostgresDB(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", datadir, port)


def stop_postgres(db: PostgresDB) -> None:
    pg_ctl = _pg_bin("pg_ctl")
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + [pg_ctl, "-D", str(db.datadir), "-m", "immediate", "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_db(tmp_path_factory) -> Iterator[PostgresDB]:
    try:
        db = start_postgres(Path(tempfile.mkdtemp(prefix="dinoflow-pg-")))
    except RuntimeError as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield db
    stop_postgres(db)


# ---------------------------------------------------------------- MLflow server


@dataclass
class MlflowServer:
    uri: str
    backend: str  # "postgresql" or "sqlite"
    backend_reason: str  # why SQLite, when it is
    artifacts: str  # s3://bucket/prefix behind --serve-artifacts
    s3: S3Server
    proc: subprocess.Popen
    log: Path


def spawn_mlflow(
    workdir: Path,
    backend_uri: str,
    artifacts: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
    port: int | None = None,
) -> tuple[str, subprocess.Popen, Path]:
    """A real `mlflow server` on `port` (default: a free one) of 127.0.0.1, healthy: (uri, process, log file)."""
    port = port or free_port()
    log = workdir / f"mlflow-{port}.log"
    argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts]
    argv += ["--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout_s, proc, log)
    except RuntimeError:
        stop(proc)
        raise
    return uri, proc, log


def start_mlflow(workdir: Path, s3: S3Server, backend_uri: str, backend: str, reason: str = "") -> MlflowServer:
    artifacts = f"s3://{s3.bucket}/mlartifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(DUMMY_AWS, MLFLOW_S3_ENDPOINT_URL=s3.endpoint)  # only the server holds S3 credentials
    uri, proc, log = spawn_mlflow(workdir, backend_uri, artifacts, env)
    return MlflowServer(uri, backend, reason, artifacts, s3, proc, log)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server) -> Iterator[MlflowServer]:
    workdir = tmp_path_factory.mktemp("mlflow")
    db: PostgresDB | None = None
    try:
        db = start_postgres(Path(tempfile.mkdtemp(prefix="dinoflow-pg-")))
        backend_uri, backend, reason = db.uri, "postgresql", ""
        SERVICE_NOTES.append("MLflow server backend: PostgreSQL (artifacts: S3 on moto)")
    except RuntimeError as e:
        backend_uri, backend, reason = f"sqlite:///{workdir / 'mlflow.db'}", "sqlite", str(e)
        SERVICE_NOTES.append(f"MLflow server ran on SQLite, not PostgreSQL: {reason}")
    server = start_mlflow(workdir, s3_server, backend_uri, backend, reason)
    yield server
    stop(server.proc)
    if db is not None:
        stop_postgres(db)
