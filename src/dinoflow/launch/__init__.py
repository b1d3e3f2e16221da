"""Launching stages away from a laptop: Kubeflow Pipelines steps, torchrun, Kubeflow Trainer, torchx.

Modules (one idea each):
    steps         config for a pipeline step (params text + overrides + artifact wiring), run it
    torchrun      the `torchrun -m dinoflow <stage>` command line for one node
    trainjob      build a Kubeflow Trainer v2 TrainJob (placement, owner, deadline) and validate it against the Trainer API models
    k8s           submit a TrainJob, wait for it, fail when it fails, delete it on SIGTERM (Kubernetes CustomObjectsApi)
    k8s_logs      stream the TrainJob's rank-0 log into the step's log
    shared        the shared volume's per-run, per-stage layout (staging, durable checkpoints, cleanup)
    training      dispatch a training step: in-process, torchrun on one node, or a multi-node TrainJob
    mlflow_server start-up of the MLflow server in k8s/ (backend URI, basic-auth config)
    s3_bucket     create the MLflow artifact bucket (the server's init container in k8s/)
    gate          the registry gate as a pipeline condition
    cuda_check    the node's NVIDIA driver against the image's CUDA, before GPU training (named error)
    data_version  a digest of the curate inputs' listing, for KFP's cache key
    data_ref      large data between steps by reference on the shared volume, never by copy
    stale_runs    close MLflow parents that terminated pipeline runs left RUNNING
    fetch_model   KServe's storage initializer for models:/ URIs
    torchx_components   torchx component: `torchx run -s local_cwd dinoflow.launch.torchx_components:train`
"""
