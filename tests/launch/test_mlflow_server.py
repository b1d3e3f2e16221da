"""Start-up of the MLflow server in k8s/ (dinoflow.launch.mlflow_server), and the Deployment's
own command run for real here: PostgreSQL backend, S3 artifacts on moto_server, the bucket init
container, basic auth and the Host allow-list (the container tier runs the same in the image)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from dinoflow.errors import DinoflowError
from dinoflow.launch.mlflow_server import auth_config_text, backend_store_uri, prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
from k8s_build import K8S, build, container
from services import DUMMY_AWS, free_port, start_moto, start_postgres, stop, stop_postgres, wait_http

AWKWARD = "p@ss:w/rd%41 #;x"  # characters that break a naive URI or ini file


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD": AWKWARD,
        "POSTGRES_DB": "mlflow",
        "POSTGRES_HOST": "db",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "an-admin-password-1",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth" / "basic_auth.ini"),
        **extra,
    }


def test_backend_uri_quotes_every_part(tmp_path):
    uri = backend_store_uri(_env(tmp_path, POSTGRES_PORT="6543"))
    assert uri == "postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd%2541%20%23%3Bx@db:6543/mlflow"
    from sqlalchemy.engine import make_url

    assert make_url(uri).password == AWKWARD


def test_auth_config_is_what_mlflow_reads(tmp_path, monkeypatch):
    env = _env(tmp_path, MLFLOW_AUTH_DEFAULT_PERMISSION="READ")
    uri = prepare(env)
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "an-admin-password-1" not in path.read_text()  # MLflow takes the password from the env itself
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    from mlflow.server.auth.config import read_auth_config

    cfg = read_auth_config()  # MLflow's own reader (ConfigParser with interpolation)
    assert cfg.database_uri == uri and cfg.default_permission == "READ" and cfg.admin_username == "admin"


@pytest.mark.parametrize(
    "change,match",
    [
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": "REPLACE_ME_ADMIN_PASSWORD"}, "MLFLOW_AUTH_ADMIN_PASSWORD still hold"),
        ({"AWS_SECRET_ACCESS_KEY": "REPLACE_ME_SECRET_KEY"}, "AWS_SECRET_ACCESS_KEY still hold"),
        ({"POSTGRES_PASSWORD": ""}, "POSTGRES_PASSWORD"),
        ({"MLFLOW_AUTH_DEFAULT_PERMISSION": "ALL"}, "MLFLOW_AUTH_DEFAULT_PERMISSION must be one of"),
    ],
)
def test_placeholders_and_gaps_are_refused_without_echoing_values(tmp_path, change, match):
    env = _env(tmp_path, **change)
    with pytest.raises(DinoflowError, match=match) as e:
        prepare(env)
    assert AWKWARD not in str(e.value) and not Path(env["MLFLOW_AUTH_CONFIG_PATH"]).exists()


def test_ini_escapes_percent(tmp_path):
    text = auth_config_text(_env(tmp_path), "postgresql+psycopg2://u:a%25b@h:5432/d")
    assert "a%%25b" in text


@pytest.mark.slow
def test_the_deployment_command_serves_its_names_with_auth(tmp_path):
    """The mlflow container's command/args and the create-bucket init container, exactly as the
    kustomize build has them (only the port is moved off 5000), run against PostgreSQL and moto."""
    try:
        db = start_postgres(Path(tempfile.mkdtemp(prefix="dinoflow-pg-")))
    except RuntimeError as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    s3 = start_moto(tmp_path, bucket=None)
    docs = build(K8S / "overlays" / "standalone")
    server, init = (
        container(docs, "dinoflow-mlflow", "mlflow"),
        container(docs, "dinoflow-mlflow", "create-bucket", init=True),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update({e["name"]: e["value"] for e in server["env"] if "value" in e})  # the manifest's literal values
    env.update(
        _env(tmp_path, POSTGRES_USER="postgres", POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(db.port)),
        **DUMMY_AWS,
        MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    port = free_port()
    log = tmp_path / "mlflow.log"
    proc = None
    try:
        done = subprocess.run([*init["command"], *init["args"]], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "created" in done.stdout, done.stderr
        args = [a.replace("--port 5000", f"--port {port}") for a in server["args"]]
        proc = subprocess.Popen(
            [*server["command"], *args],
            env=env,
            cwd=tmp_path,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        admin = ("admin", "an-admin-password-1")
        for name in (
            "dinoflow-mlflow",
            "dinoflow-mlflow.dinoflow",
            "dinoflow-mlflow.dinoflow.svc",
            "dinoflow-mlflow.dinoflow.svc.cluster.local",
        ):
            r = requests.get(
                f"{api}/experiments/search", params={"max_results": 1}, headers={"Host": f"{name}:5000"}, auth=admin
            )
            assert r.status_code == 200, (name, r.status_code, r.text[:200])
        host = {"Host": "dinoflow-mlflow.dinoflow.svc.cluster.local:5000"}
        assert requests.get(f"{api}/experiments/search", params={"max_results": 1}, headers=host).status_code == 401
        assert (
            requests.get(
                f"{api}/experiments/search",
                params={"max_results": 1},
                headers={"Host": "evil.example:5000"},
                auth=admin,
            ).status_code
            == 403
        )
        # the pipeline's user (docs/kubeflow.md: created by the admin) logs an artifact through the proxy into the new bucket
        r = requests.post(
            f"{api}/users/create",
            json={"username": "pipeline", "password": "a-pipeline-password-1"},
            headers=host,
            auth=admin,
        )
        assert r.status_code == 200, r.text[:300]
        user = ("pipeline", "a-pipeline-password-1")
        exp = requests.post(f"{api}/experiments/create", json={"name": "k8s-check"}, headers=host, auth=user).json()[
            "experiment_id"
        ]
        run = requests.post(f"{api}/runs/create", json={"experiment_id": exp}, headers=host, auth=user).json()["run"][
            "info"
        ]
        art = run["artifact_uri"].replace(
            "mlflow-artifacts:", f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts"
        )
        assert requests.put(f"{art}/hello.txt", data=b"hi", headers=host, auth=user).status_code == 200
        keys = [
            o["Key"] for o in s3.client().list_objects_v2(Bucket=init["args"][0][5:].split("/")[0]).get("Contents", [])
        ]
        assert any(k.endswith("/hello.txt") for k in keys)
    finally:
        if proc is not None:
            stop(proc)
        stop(s3.proc)
        stop_postgres(db)
