"""What never reaches MLflow, logs or saved configs: secret-looking keys and credentials in URLs.

A leaf module (no project imports) so the config loader, tracking and the launchers can all use it.

One definition of "looks like a secret" for the whole project (`is_secret_key`), and one of a
credential inside a URL (`redact`: `scheme://user:password@host` → `scheme://***@host`).
"""

from __future__ import annotations

import json
import re
from typing import Any

_SECRET_KEY = re.compile(r"secret|passw|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|auth", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def redact(text: str) -> str:
    """Hide the `user:password@` part of every URL in `text`."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def has_userinfo(text: str) -> bool:
    """True when `text` holds a URL with credentials in it (`scheme://user[:password]@host`)."""
    return bool(_URL_USERINFO.search(text))


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
