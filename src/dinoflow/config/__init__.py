"""The typed configuration: `params.yaml` and `-S` overrides, validated before any stage starts.

Import sections and loaders from here (`from dinoflow.config import Config, load_config`). The
modules below say where each part lives:

- `root`: `Config` (every section), `load_config`, `config_from_text`, `dump_config`, `save_config`;
- `base`: what all sections share (`Section`, numeric types, readable validation errors);
- `data`, `train`, `release`: the sections by area (demo and curate; pretrain and distill;
  evaluate, register, serving, tracking);
- `params_yaml`: reading a params file or `-S` value with hostile input refused;
- `archs`, `model_size`: the ViT presets and the sizes they imply, known before allocation;
- `stages`: what each stage reads and which section holds its parameters;
- `secrets`: what never reaches MLflow, logs or saved configs;
- `pipeline_env`: the environment a shell sets to name the pipeline run;
- `reference`: the generated configuration reference (docs/configuration.md).
"""

from dinoflow.config.base import DEFAULT_SEED, stage_seed
from dinoflow.config.root import (
    ARCHS,
    MAX_FILE_BYTES,
    SEEDED_SECTIONS,
    Arch,
    Config,
    ConfigError,
    CropConfig,
    CurateConfig,
    DemoConfig,
    DistillConfig,
    EvalDataset,
    EvaluateConfig,
    HeadConfig,
    LossConfig,
    MaskConfig,
    ModelConfig,
    OnnxExportConfig,
    OptimConfig,
    PretrainConfig,
    RegisterConfig,
    ServingConfig,
    TrackingConfig,
    TrainConfig,
    config_from_dict,
    config_from_text,
    dump_config,
    load_config,
    parse_override,
    save_config,
)

__all__ = [
    "DEFAULT_SEED",
    "stage_seed",
    "ARCHS",
    "Arch",
    "Config",
    "ConfigError",
    "CropConfig",
    "CurateConfig",
    "DemoConfig",
    "DistillConfig",
    "EvalDataset",
    "EvaluateConfig",
    "HeadConfig",
    "LossConfig",
    "MAX_FILE_BYTES",
    "MaskConfig",
    "ModelConfig",
    "OnnxExportConfig",
    "OptimConfig",
    "PretrainConfig",
    "RegisterConfig",
    "SEEDED_SECTIONS",
    "ServingConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_from_dict",
    "config_from_text",
    "dump_config",
    "load_config",
    "parse_override",
    "save_config",
]
