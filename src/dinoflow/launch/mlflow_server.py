"""Start-up of the MLflow tracking server deployed by `k8s/` (the `mlflow` container's command).

    MLFLOW_BACKEND_STORE_URI="$(python -m dinoflow.launch.mlflow_server)"

Builds the PostgreSQL backend URI from the `POSTGRES_*` variables (URL-quoted, so any password
works) and writes the config of MLflow's basic-auth app to `MLFLOW_AUTH_CONFIG_PATH` (under
/tmp: the container's root filesystem is read-only). The auth tables live in the same database
(MLflow keeps their migrations in their own `alembic_version_auth` table). The admin password is
not written: MLflow reads it from `MLFLOW_AUTH_ADMIN_PASSWORD` itself. Prints the backend URI on
stdout (captured by the shell, never logged); refuses placeholder credentials from the secret
templates; every error names the variable, never its value.
"""

from __future__ import annotations

import configparser
import io
import os
import sys
from pathlib import Path
from typing import Mapping
from urllib.parse import quote

from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_text

PLACEHOLDER_PREFIX = "REPLACE_ME"  # what k8s/base/*/secrets.template.yaml ships instead of values
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")  # MLflow's basic-auth permission names
REQUIRED = (
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_HOST",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
# credentials that must not still be the template's placeholder (S3 keys only when set)
CREDENTIALS = (
    "POSTGRES_PASSWORD",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def check_env(env: Mapping[str, str]) -> None:
    """Raise DinoflowError naming every missing variable and every placeholder credential."""
    missing = [k for k in REQUIRED if not env.get(k, "").strip()]
    if missing:
        raise DinoflowError(
            f"the MLflow server needs {', '.join(missing)} (from the k8s secrets); they are unset or empty"
        )
    placeholders = [k for k in CREDENTIALS if env.get(k, "").startswith(PLACEHOLDER_PREFIX)]
    if placeholders:
        raise DinoflowError(
            f"{', '.join(placeholders)} still hold the template placeholder {PLACEHOLDER_PREFIX}...: fill in the secrets "
            "(k8s/base/services/secrets.template.yaml or your secret store) before starting MLflow"
        )
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ")
    if permission not in PERMISSIONS:
        raise DinoflowError(
            f"MLFLOW_AUTH_DEFAULT_PERMISSION must be one of {', '.join(PERMISSIONS)}, got {permission!r}"
        )


def backend_store_uri(env: Mapping[str, str]) -> str:
    """`postgresql+psycopg2://user:password@host:port/db` with every part URL-quoted.

    psycopg2 is named explicitly: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3,
    which the image does not ship.
    """
    q = lambda key: quote(env[key], safe="")  # noqa: E731
    port = env.get("POSTGRES_PORT", "5432")
    return f"postgresql+psycopg2://{q('POSTGRES_USER')}:{q('POSTGRES_PASSWORD')}@{env['POSTGRES_HOST']}:{port}/{q('POSTGRES_DB')}"


def auth_config_text(env: Mapping[str, str], database_uri: str) -> str:
    """The basic-auth app's ini. `%` is doubled: MLflow reads it with ConfigParser interpolation."""
    parser = configparser.RawConfigParser()
    parser["mlflow"] = {
        "default_permission": env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
        "database_uri": database_uri.replace("%", "%%"),
        "admin_username": env["MLFLOW_AUTH_ADMIN_USERNAME"].replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def prepare(env: Mapping[str, str]) -> str:
    """Check the environment, write the auth config (mode 0600); return the backend URI."""
    check_env(env)
    uri = backend_store_uri(env)
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)
    try:
        atomic_write_text(path, auth_config_text(env, uri))
    finally:
        os.umask(old)
    return uri


def main() -> int:
    try:
        uri = prepare(os.environ)
    except (DinoflowError, OSError) as e:
        print(f"dinoflow.launch.mlflow_server: {e}", file=sys.stderr)
        return 2
    print(uri)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
