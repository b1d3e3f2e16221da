"""The project's container images, tagged with the package version (`dinoflow.__version__`, which
pyproject.toml reads too). The KFP components (`components/images.py`, with environment
overrides) and the torchx component take their defaults from here; the k8s/ manifests and the
docker/ build comments cannot import it, so a test checks that they name the same tags.
"""

from __future__ import annotations

from dinoflow import __version__

TRAIN_IMAGE_NAME = "dinoflow/dinoflow-cuda"  # docker/Dockerfile: CUDA training image
CPU_IMAGE_NAME = "dinoflow/dinoflow-cpu"  # docker/Dockerfile.cpu: curation, evaluation, registry, MLflow server
SERVING_IMAGE_NAME = "dinoflow/dinoflow-serving"  # docker/Dockerfile.serving: KServe predictor (k8s/serving/)
TRAIN_IMAGE = f"{TRAIN_IMAGE_NAME}:{__version__}"
CPU_IMAGE = f"{CPU_IMAGE_NAME}:{__version__}"
SERVING_IMAGE = f"{SERVING_IMAGE_NAME}:{__version__}"
