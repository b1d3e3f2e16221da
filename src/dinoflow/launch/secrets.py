"""The Kubernetes secrets the cluster steps read their credentials from: one definition for the
pipeline steps (`pipelines/steps.py`, `use_secret_as_env`), the TrainJob pods
(`dinoflow.launch.training`, secretKeyRef) and the templates in k8s/base/pipeline/ (a test checks
that the manifests name the same secrets and keys). Only names live here, never values.
"""

from __future__ import annotations

S3_SECRET = "dinoflow-s3"
MLFLOW_SECRET = "dinoflow-mlflow"
# the keys of each secret; every key becomes the env var of the same name in a step
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# the credentials among those keys: TrainJob pods read these by secretKeyRef (the plain endpoints
# and URI are forwarded from the step's env instead, dinoflow.launch.training.FORWARDED_ENV)
CREDENTIAL_KEYS = {
    S3_SECRET: ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    MLFLOW_SECRET: ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
}
