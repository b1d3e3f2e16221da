"""data_version: a digest of the listing of every curate input (dinoflow.launch.data_version).

The DAG's first step, never cached: its output is an input of the curation steps, so KFP's cache
key (which holds no content of an s3:// prefix or a folder) changes when the pool does.
"""

from typing import List

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def data_version(params_yaml: str, overrides: List[str]) -> str:
    """`sha256:<hex>` over the keys, sizes and ETags (files: paths, sizes, mtimes) of the curate inputs."""
    from dinoflow.launch.data_version import data_version as version_of
    from dinoflow.launch.steps import check_pod_paths, step_config

    cfg = step_config(params_yaml, overrides)
    check_pod_paths("curate", cfg)
    version = version_of(cfg)
    print(f"curate inputs: {version}")
    return version
