"""Validate objects against vendored CustomResourceDefinitions the way the API server does on
create: structural defaulting, then the OpenAPI v3 schema with unknown fields rejected (kubectl's
`--validate=strict`), ObjectMeta's name and label syntax, then every `x-kubernetes-validations`
CEL rule (evaluated with cel-python; transition rules, which name `oldSelf`, apply only to
updates and are not evaluated). No Kubernetes API server can run here, so this is the stand-in
for one; the CRDs are the released ones (tests/k8s/crds/SOURCE.md).
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parent / "crds"
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


@lru_cache(maxsize=None)
def schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the openAPIV3Schema of every served version of every vendored CRD."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def validate(obj: dict) -> list[str]:
    """The errors the API server would answer to creating `obj` (empty: it would be accepted)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in schemas():
        return [f"no vendored CRD serves {key[0]} {key[1]}"]
    schema = schemas()[key]
    obj = copy.deepcopy(obj)
    _default(obj, schema)
    errors: list[str] = []
    _check(obj, schema, "", errors)
    if not errors:  # the API server runs CEL only on a structurally valid object
        _cel(obj, schema, "", errors)
    return errors


def _default(value: Any, schema: dict) -> None:
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for v in value.values():
                _default(v, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def _type_ok(value: Any, schema: dict) -> bool:
    if value is None:
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def _check(value: Any, schema: dict, path: str, errors: list[str]) -> None:
    where = path or "<root>"
    if not _type_ok(value, schema):
        errors.append(f"{where}: expected {schema.get('type', 'int-or-string')}, got {type(value).__name__}")
        return
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    if isinstance(value, list):
        _check_array(value, schema, path, errors)


def _check_object(value: dict, schema: dict, path: str, errors: list[str]) -> None:
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in value:
            errors.append(f"{path}.{name}: required" if path else f"{name}: required")
    extra = schema.get("additionalProperties")
    for name, sub in value.items():
        sub_path = f"{path}.{name}" if path else name
        if name in props:
            _check(sub, props[name], sub_path, errors)
        elif isinstance(extra, dict):
            _check(sub, extra, sub_path, errors)
        elif not (schema.get("x-kubernetes-preserve-unknown-fields") or path == "metadata"):
            errors.append(f"{sub_path}: unknown field")  # the object's own metadata is ObjectMeta's (_metadata)
    if path == "metadata" or path.endswith(".metadata"):
        errors += _metadata(value, path)
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{path}: more than {schema['maxProperties']} properties")


def _check_array(value: list, schema: dict, path: str, errors: list[str]) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    items = schema.get("items") or {}
    for i, item in enumerate(value):
        _check(item, items, f"{path}[{i}]", errors)
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
        if len(seen) != len(set(seen)):
            errors.append(f"{path}: duplicate entries for map keys {keys}")
    if schema.get("x-kubernetes-list-type") == "set" and len({repr(v) for v in value}) != len(value):
        errors.append(f"{path}: duplicate entries in a set")


def _metadata(meta: dict, path: str) -> list[str]:
    """What the API server checks of ObjectMeta, the object's and its templates' (names, labels,
    annotations)."""
    errors = []
    for field in ("name", "namespace"):
        v = meta.get(field)
        if isinstance(v, str) and (not _DNS1123_SUBDOMAIN.match(v) or len(v) > 253):
            errors.append(f"{path}.{field}: {v!r} is not a DNS-1123 subdomain")
    for field in ("labels", "annotations"):
        for key, v in (meta.get(field) or {}).items():
            prefix, _, name = key.rpartition("/")
            if (prefix and not _DNS1123_SUBDOMAIN.match(prefix)) or not _LABEL_NAME.match(name) or len(name) > 63:
                errors.append(f"{path}.{field}: bad key {key!r}")
            if not isinstance(v, str):
                errors.append(f"{path}.{field}.{key}: values are strings, got {type(v).__name__}")
            elif field == "labels" and (not _LABEL_VALUE.match(v) or len(v) > 63):
                errors.append(f"{path}.labels.{key}: bad value {v!r}")
    return errors


@lru_cache(maxsize=None)
def _program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel(value: Any, schema: dict, path: str, errors: list[str]) -> None:
    import celpy

    for v in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in v["rule"]:
            continue  # a transition rule: only on update
        try:
            ok = _program(v["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as e:  # e.g. a field the rule reads is absent: the API server rejects too
            errors.append(f"{path or '<root>'}: rule {v['rule']!r} did not evaluate: {e}")
            continue
        if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            errors.append(f"{path or '<root>'}: {v.get('message') or v['rule']}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, sub in value.items():
            sub_schema = props.get(name, extra if isinstance(extra, dict) else None)
            if sub_schema:
                _cel(sub, sub_schema, f"{path}.{name}" if path else name, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _cel(item, schema["items"], f"{path}[{i}]", errors)
