"""Typed configuration: `params.yaml` + `-S section.key=value` overrides, validated at load time.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key or an invalid value
is rejected before any stage starts work, with a message naming the key and what is allowed.
Numbers have their natural ranges, floats must be finite, URLs must not carry credentials
(`config_base`); the YAML is read by `params_yaml`. The resolved config (URL credentials
redacted) is saved next to every checkpoint and logged with every run.

The sections live by area (`config_train`: the training stages and their shared parts;
`config_data`: demo and curate; `config_release`: evaluate, register, tracking); this module
assembles them into `Config`, loads and saves it, and is the one place to import them from.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from dinoflow.config.base import DEFAULT_SEED, Section, Seed, explain, stage_seed
from dinoflow.config.data import MAX_FILE_BYTES, CurateConfig, DemoConfig
from dinoflow.config.params_yaml import check_tree, parse_override, read_params_file, read_params_text, set_dotted
from dinoflow.config.release import (
    DENSE_KINDS,
    EvalDataset,
    EvaluateConfig,
    OnnxExportConfig,
    RegisterConfig,
    ServingConfig,
    TrackingConfig,
)
from dinoflow.config.secrets import redact_tree
from dinoflow.config.train import (
    ARCHS,
    Arch,
    CropConfig,
    DistillConfig,
    HeadConfig,
    LossConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
)
from dinoflow.errors import ConfigError
from dinoflow.io import atomic_write_text

__all__ = [
    "DEFAULT_SEED",
    "stage_seed",
    "MAX_FILE_BYTES",
    "ARCHS",
    "Arch",
    "Config",
    "ConfigError",
    "CropConfig",
    "CurateConfig",
    "DemoConfig",
    "DistillConfig",
    "DENSE_KINDS",
    "EvalDataset",
    "EvaluateConfig",
    "HeadConfig",
    "LossConfig",
    "MaskConfig",
    "ModelConfig",
    "OnnxExportConfig",
    "OptimConfig",
    "PretrainConfig",
    "RegisterConfig",
    "ServingConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_from_dict",
    "config_from_text",
    "dump_config",
    "load_config",
    "parse_override",
    "save_config",
    "SEEDED_SECTIONS",
]

# `register` is a stage name; pydantic warns once, when the class is built, that it shadows
# BaseModel.register (an ABC hook never used here). Silenced for this definition only: the
# filter is not left installed for the rest of the process.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Config(Section):
        seed: Seed = DEFAULT_SEED
        demo: DemoConfig = Field(default_factory=DemoConfig)
        curate: CurateConfig = Field(default_factory=CurateConfig)
        pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
        distill: DistillConfig = Field(default_factory=DistillConfig)
        evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
        register: RegisterConfig = Field(default_factory=RegisterConfig)
        serving: ServingConfig = Field(default_factory=ServingConfig)
        tracking: TrackingConfig = Field(default_factory=TrackingConfig)

        @model_validator(mode="after")
        def _stage_seeds_inherit(self) -> "Config":
            # Resolved here, once, so every stage reads a plain int from its own section and the saved
            # section (beside checkpoints, in MLflow params) records the seed that ran.
            for name in SEEDED_SECTIONS:
                section = getattr(self, name)
                if section.seed is None:
                    section.seed = self.seed
            return self


# the sections whose `seed` (unset) takes the top-level one
SEEDED_SECTIONS = ("demo", "curate", "pretrain", "distill", "evaluate")


# ---------------------------------------------------------------- loading


def config_from_dict(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(explain(e)) from None


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load `path` (a missing default `params.yaml` means all defaults), apply overrides, validate.

    Raises ConfigError naming every bad key and value, before any stage starts work. A params file
    that exists but sets nothing (empty, or only comments) is refused: write `{}` to ask for the
    defaults on purpose.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if os.path.lexists(p) or str(path) != "params.yaml":
            tree = _sections(read_params_file(p), str(p))
    return _build(tree, overrides)


def config_from_text(
    text: str,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    *,
    origin: str = "params text",
) -> Config:
    """`load_config` for params held in memory (a pipeline parameter), with the same checks on the
    text as on a file (size, aliases, duplicate keys, UTF-8; `params_yaml.read_params_text`).

    `values` (`{"pretrain.data": "/a path"}`) are set on the tree after the overrides, as Python
    objects: no YAML round trip, so any string (quotes, brackets, `: `, non-BMP characters) arrives
    exactly, and a value set here cannot be redirected by an override. Raises ConfigError.
    """
    tree = _sections(read_params_text(text, origin), origin)
    return _build(tree, overrides, values)


def _sections(loaded: Any, origin: str) -> dict[str, Any]:
    """The params document as the tree of sections, or ConfigError for an empty or non-mapping one."""
    if loaded is None:
        raise ConfigError(
            f"{origin} is empty (no settings): every stage would run the full DINOv2 recipe defaults. "
            "To run with the defaults on purpose, write `{}` in it; otherwise check that it is the file you meant"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{origin}: top level must be a mapping of sections (e.g. `pretrain:`), got a {type(loaded).__name__}"
        )
    return loaded


def _build(tree: dict[str, Any], overrides: Sequence[str], values: Mapping[str, Any] | None = None) -> Config:
    """Overrides, then `values`, on a copy of `tree`; the result checked and validated."""
    tree = copy.deepcopy(tree)
    for ov in overrides:
        key, value = parse_override(ov)
        set_dotted(tree, key, value)
    for key, value in (values or {}).items():
        set_dotted(tree, key, copy.deepcopy(value))
    check_tree(tree)
    return config_from_dict(tree)


def dump_config(cfg: BaseModel) -> str:
    """YAML text of a (section of the) config, as saved beside checkpoints and runs (URL credentials redacted)."""
    return yaml.safe_dump(redact_tree(cfg.model_dump(mode="json")), sort_keys=False)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the config atomically (temp file + rename)."""
    atomic_write_text(path, dump_config(cfg))
