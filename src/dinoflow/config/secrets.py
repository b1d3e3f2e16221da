"""What never reaches MLflow, logs or saved configs: secret-looking keys and credentials in URLs.

One definition of "looks like a secret" for the whole project (`is_secret_key`), and of credentials
written into URLs (`s3://user:secret@bucket/…`): found, refused, redacted
(`scheme://user:password@host` → `scheme://***@host`).

The config refuses them at load (`credential_problem`), so a params file or `-S` override
cannot put a secret into `config/resolved.yaml`, a checkpoint's `train_config.yaml` or an MLflow
run; `redact_urls` is the second guard for configs built in code and for any text that is about
to be saved or printed.

Where is the userinfo? RFC 3986 ends the authority at the first "/", "?" or "#", so
`scheme://user:pw@host/path` has userinfo `user:pw`. An AWS secret key often holds a "/" that
people do not percent-encode (`s3://AKIA…:ab/cd@bucket/`), which moves the "@" out of the
RFC authority; object-store bucket names never hold ":" or "@", so for those schemes a ":" in
the authority with an "@" later in the string is treated as credentials too.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Object stores whose "host" is a bucket / container name (no ":" and no "@" in it).
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss", "wasb", "wasbs", "oss", "r2"})
# Databases where `user@host` (no password; it comes from PGPASSWORD, ~/.pgpass, …) is normal.
USERNAME_OK_SCHEMES = frozenset({"postgresql", "postgres", "mysql", "mssql", "oracle"})

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>[^\s]*)")
MASK = "***"

ENV_HINT = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO) in the environment",
    "http": "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment",
    "db": "the database's own mechanism (PGPASSWORD, ~/.pgpass), or put the whole URI in MLFLOW_TRACKING_URI",
}


def _base_scheme(scheme: str) -> str:
    return scheme.lower().split("+", 1)[0]


def _userinfo_end(scheme: str, rest: str) -> int:
    """Index in `rest` of the "@" that ends the credentials, or -1 when there are none."""
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:cut]
    if "@" in authority:
        return authority.rindex("@")
    if _base_scheme(scheme) in OBJECT_STORE_SCHEMES and ":" in authority and "@" in rest:
        return rest.index("@")
    return -1


def _secret_end(scheme: str, rest: str) -> int:
    """Like `_userinfo_end`, but -1 for a database user name without a password (not a secret)."""
    end = _userinfo_end(scheme, rest)
    if end >= 0 and _base_scheme(scheme) in USERNAME_OK_SCHEMES and ":" not in rest[:end]:
        return -1
    return end


def redact_urls(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***` (a database user name alone is kept)."""

    def sub(m: re.Match[str]) -> str:
        rest = m.group("rest")
        end = _secret_end(m.group("scheme"), rest)
        return m.group(0) if end < 0 else f"{m.group('scheme')}://{MASK}{rest[end:]}"

    return _URL.sub(sub, text)


def redact_tree(obj: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, strings, …) with `redact_urls` applied to every string."""
    if isinstance(obj, str):
        return redact_urls(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj


def credential_problem(value: str) -> str | None:
    """Why `value` must not be stored (credentials inside a URL), or None when it holds none.

    The message shows the URL redacted and says where the credentials belong instead.
    """
    for m in _URL.finditer(value):
        scheme, rest = m.group("scheme"), m.group("rest")
        if _secret_end(scheme, rest) < 0:
            continue
        base = _base_scheme(scheme)
        hint = ENV_HINT["s3" if base in OBJECT_STORE_SCHEMES else "db" if base in USERNAME_OK_SCHEMES else "http"]
        return (
            f"{redact_urls(m.group(0))} carries credentials in the URL, which would be stored in plain text in "
            f"resolved configs, checkpoints and MLflow; remove them and use {hint}"
        )
    return None


_SECRET_KEY = re.compile(r"secret|passw|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|auth", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → `a.b.c` keys; lists become their JSON text; secret-looking keys are dropped and
    URL credentials redacted, so the result is safe to log as MLflow params."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if is_secret_key(str(k)):
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        value = json.dumps(tree) if isinstance(tree, (list, tuple)) else tree
        out[prefix] = redact_urls(value) if isinstance(value, str) else value
    return out
