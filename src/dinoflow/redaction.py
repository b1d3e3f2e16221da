"""What never reaches MLflow, logs or saved configs: secret-looking keys and credentials in URLs.

One definition of "looks like a secret" for the whole project (`is_secret_key`); credentials inside
URLs are found by `dinoflow.url_secrets` (`redact`: `scheme://user:password@host` → `scheme://***@host`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from dinoflow.url_secrets import redact_urls as redact

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
        out[prefix] = redact(value) if isinstance(value, str) else value
    return out
