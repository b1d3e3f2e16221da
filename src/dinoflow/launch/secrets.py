"""The Kubernetes secrets the cluster steps read their credentials from: one definition for the
pipeline steps (`pipelines/steps.py`, `use_secret_as_env`), the TrainJob pods
(`dinoflow.launch.training`, secretKeyRef) and the templates in k8s/base/pipeline/ (a test checks
that the manifests name the same secrets and keys). Only names live here, never values.
"""

from __future__ import annotations

from dinoflow.data.s3 import ACCESS_KEY_ENV, ENDPOINT_ENV, SECRET_KEY_ENV

S3_SECRET = "dinoflow-s3"
MLFLOW_SECRET = "dinoflow-mlflow"
# the keys of each secret; every key becomes the env var of the same name in a step. No AWS_* name:
# KFP's launcher runs in the step's container and reads AWS_* for its own artifact store. MLflow
# artifacts go through the tracking server's proxy, so the steps need no MLflow S3 settings either.
S3_KEYS = (ENDPOINT_ENV, ACCESS_KEY_ENV, SECRET_KEY_ENV)
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# the credentials among those keys: TrainJob pods read these by secretKeyRef (the plain endpoints
# and URI are forwarded from the step's env instead, dinoflow.launch.training.FORWARDED_ENV)
CREDENTIAL_KEYS = {
    S3_SECRET: (ACCESS_KEY_ENV, SECRET_KEY_ENV),
    MLFLOW_SECRET: ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
}
