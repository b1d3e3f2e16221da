"""Labels and annotations that the cluster reads off the pods and jobs dinoflow creates: one
definition for the TrainJob builder (dinoflow.launch.trainjob), the pipeline steps
(pipelines/steps.py), and the manifests in k8s/ (a test checks that they name the same).
"""

from __future__ import annotations

# The network policies in k8s/base/services admit only pods carrying this label (pipeline steps
# and TrainJob node pods) from the pipeline namespace; nothing else there reaches MLflow or MinIO.
STEP_LABEL_KEY = "dinoflow/step"
STEP_LABEL_VALUE = "true"
STEP_LABEL = {STEP_LABEL_KEY: STEP_LABEL_VALUE}
# Multi-user Kubeflow namespaces inject an Istio sidecar that never exits, so a node pod that has
# one never completes. Recent Istio reads the switch as a pod label, older releases as an
# annotation: pods the project creates carry both.
ISTIO_INJECT_KEY = "sidecar.istio.io/inject"
NO_SIDECAR = {ISTIO_INJECT_KEY: "false"}
# Kueue admits a TrainJob through the LocalQueue named by this label on the TrainJob itself.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# The image pull secrets of a run's steps, as the compiled pipeline passes them to every step (comma
# separated): a step that launches a TrainJob gives its node pods the same ones.
PULL_SECRETS_ENV = "DINOFLOW_IMAGE_PULL_SECRETS"
