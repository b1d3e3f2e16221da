"""Container images the components run on (override at compile time with environment variables).

Tags match `docker/Dockerfile` (CUDA training image) and `docker/Dockerfile.cpu`
(curation, evaluation and registry steps); push them to your registry and set
`DINOFLOW_TRAIN_IMAGE` / `DINOFLOW_CPU_IMAGE` before `dinoflow pipeline compile`.
"""

import os

from dinoflow.launch import images

TRAIN_IMAGE = os.environ.get("DINOFLOW_TRAIN_IMAGE", images.TRAIN_IMAGE)
CPU_IMAGE = os.environ.get("DINOFLOW_CPU_IMAGE", images.CPU_IMAGE)
