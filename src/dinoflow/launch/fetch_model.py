"""KServe's storage initializer for `models:/` URIs: download a registered MLflow model into the
predictor's model directory (k8s/serving/storage-container.yaml runs it in the CPU image).

KServe starts the storage container of a matching ClusterStorageContainer with two arguments,
the InferenceService's storageUri and the directory the predictor reads (/mnt/models):

    python -m dinoflow.launch.fetch_model models:/dinoflow-student@champion /mnt/models

The alias is resolved when the predictor pod starts: a restarted predictor serves the alias's
current version. Credentials come from the environment (MLFLOW_TRACKING_URI and the user the
`dinoflow-mlflow` secret holds); artifacts come through the tracking server's proxy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from dinoflow.errors import DinoflowError
from dinoflow.tracking import named_errors, tracking_uri

PREFIX = "models:/"


def fetch_model(uri: str, dest: str | Path) -> Path:
    """Download registered model `uri` (models:/NAME@ALIAS or models:/NAME/VERSION) into `dest`."""
    import mlflow

    if not uri.startswith(PREFIX) or len(uri) <= len(PREFIX):
        raise DinoflowError(f"{uri!r} is not a registered model URI: expected models:/NAME@ALIAS or models:/NAME/N")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with named_errors(f"downloading {uri}", tracking_uri()):
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
    if not (dest / "MLmodel").is_file():
        raise DinoflowError(f"{uri} downloaded into {dest} but holds no MLmodel file: not an MLflow model")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m dinoflow.launch.fetch_model models:/NAME@ALIAS DEST_DIR", file=sys.stderr)
        return 2
    try:
        print(f"fetched {args[0]} into {fetch_model(args[0], args[1])}")
    except DinoflowError as e:
        print(f"fetch_model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
