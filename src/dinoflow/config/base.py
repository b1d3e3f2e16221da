"""What every config section shares: the `Section` base, the numeric field types, and turning a
pydantic `ValidationError` into a message for the person who wrote params.yaml.

`Section` forbids unknown keys, refuses inf/NaN in every float (no key needs them) and refuses
credentials written into URLs (`dinoflow.config.secrets`). Messages show at most a short, redacted
repr of the offending value, and at most `MAX_LISTED_ERRORS` problems.
"""

from __future__ import annotations

import reprlib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dinoflow.config.secrets import credential_problem, redact_urls
from dinoflow.errors import bounded

MAX_SEED = 2**32 - 1
MAX_LISTED_ERRORS = 20
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# A stage's own seed: unset, it takes the top-level `seed` (resolved when `Config` is built).
STAGE_SEED_DOC = "this stage's seed; null: the top-level `seed`"
DEFAULT_SEED = 0  # the top-level `seed` when params.yaml sets none
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
# names that end up in file names, report keys and MLflow metric names
SafeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 80, 80


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


class Section(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` are refused for every float of every section
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_url_credentials(cls, value: Any) -> Any:
        for text in _strings(value):
            problem = credential_problem(text)
            if problem:
                raise ValueError(problem)
        return value


def short_repr(value: Any) -> str:
    """A bounded, credential-free repr of a (possibly huge or hostile) config value."""
    return redact_urls(_REPR.repr(value))


def explain(err: ValidationError) -> str:
    """One line per problem: `  key.path: what is wrong (allowed …); got <value>`."""
    lines = []
    errors = err.errors()
    for e in errors[:MAX_LISTED_ERRORS]:
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check the spelling; see docs/configuration.md)")
            continue
        msg = redact_urls(str(e["msg"])).removeprefix("Value error, ")
        ctx = e.get("ctx") or {}
        allowed = f" (allowed: {ctx['expected']})" if "expected" in ctx else ""
        got = "" if e["type"] == "missing" else f"; got {short_repr(e.get('input'))}"
        lines.append(bounded(f"  {loc or '(top level)'}: {msg}{allowed}{got}", 500))
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  … and {len(errors) - MAX_LISTED_ERRORS} more problems")
    return "invalid configuration:\n" + "\n".join(lines)


def stage_seed(seed: int | None) -> int:
    """A stage section's seed as an int. `Config` resolves an unset one to the top-level `seed`; a
    section built on its own (a library call, a test) has no top level, so it takes that default."""
    return DEFAULT_SEED if seed is None else seed
