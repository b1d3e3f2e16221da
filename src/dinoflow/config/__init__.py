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

from dinoflow.config.root import *  # noqa: F403 - the package's face is root's public names
from dinoflow.config.root import __all__  # noqa: F401 - re-exported as this package's own
