"""Launching stages away from a laptop: Kubeflow Pipelines steps, torchrun, Kubeflow Trainer, torchx.

Modules (one idea each):
    steps         config for a pipeline step (params text + overrides + artifact wiring), run it
    torchrun      the `torchrun -m dinoflow <stage>` command line for one node
    trainjob      build a Kubeflow Trainer v2 TrainJob and validate it against the Trainer API models
    k8s           submit a TrainJob, wait for it, fail when it fails (Kubernetes CustomObjectsApi)
    training      dispatch a training step: in-process, torchrun on one node, or a multi-node TrainJob
    gate          the registry gate as a pipeline condition
    torchx_components   torchx component: `torchx run -s local_cwd dinoflow.launch.torchx_components:train`
"""
