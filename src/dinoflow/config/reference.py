"""The configuration reference in docs/configuration.md, generated from the config model.

`python -m dinoflow.config.reference` prints it and `--write` puts it into docs/configuration.md
between the reference markers (the page's prose around them is written by hand); a test checks
that the page carries exactly this text there, so the documentation cannot drift from the model.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dinoflow.config import Config

BEGIN = "<!-- config-reference:begin -->"
END = "<!-- config-reference:end -->"


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:  # constrained types (e.g. list[PositiveInt]) read as their base type
        return _type_name(typing.get_args(ann)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _default(model: BaseModel, name: str) -> str:
    value = getattr(model, name)
    if name == "seed" and type(model) is not Config:
        # a stage seed left unset reads `null` (it takes the top-level seed), not the value `Config` resolved
        value = type(model).model_fields["seed"].default
    if isinstance(value, BaseModel):
        return ""
    dumped = json.dumps(value if not isinstance(value, tuple) else list(value), default=str)
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        dumped = json.dumps([v.model_dump(mode="json") for v in value])
    return f"`{dumped}`"


def leaf_keys(model: BaseModel | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config (nested sections expanded)."""
    model = model if model is not None else Config()
    keys: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _rows(model: BaseModel, prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows += _rows(value, f"{prefix}{name}.")
            continue
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(model, name)} | {desc} |")
    return rows


def reference_markdown() -> str:
    cfg = Config()
    parts = [BEGIN]
    top = [n for n, f in Config.model_fields.items() if not isinstance(getattr(cfg, n), BaseModel)]
    for n in top:
        parts.append(f"- `{n}` ({_type_name(Config.model_fields[n].annotation)}, default {_default(cfg, n)})")
    for section in Config.model_fields:
        value = getattr(cfg, section)
        if not isinstance(value, BaseModel):
            continue
        doc = (type(value).__doc__ or "").strip().splitlines()[0] if type(value).__doc__ else ""
        parts += [
            "",
            f"## `{section}`" + (f" — {doc}" if doc else ""),
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
            *_rows(value, f"{section}."),
        ]
    parts.append(END)
    return "\n".join(parts)


# where the reference lives, relative to the repository root (the command runs from there)
PAGE = Path("docs/configuration.md")


def write_reference(page: Path = PAGE) -> None:
    """Replace the generated section of `page` (between BEGIN and END) with the current reference."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{page} lacks the reference markers {BEGIN} … {END}: add them where the reference goes")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    page.write_text(text[:start] + reference_markdown() + text[end:])


if __name__ == "__main__":  # python -m dinoflow.config.reference [--write [docs/configuration.md]]
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_reference(Path(sys.argv[2]) if len(sys.argv) > 2 else PAGE)
    else:
        print(reference_markdown())
