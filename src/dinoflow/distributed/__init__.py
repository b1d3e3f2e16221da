"""Where this process stands in a job, and the collectives the stages share.

- `env`: the process group from the torchrun environment (`init_distributed`, `DistEnv`), the
  checkpoints' own gloo group, `barrier`, `any_rank`;
- `collectives`: sums, maxima, global counts and log-sum-exp over ranks, on the caller's device
  (losses, Sinkhorn-Knopp), and asynchronous means for the centres;
- `comm`: the same group seen by curation, for numpy arrays.

Every helper is a local no-op in a single process, so stage code runs unchanged alone, under
torchrun, and in a Kubeflow step or TrainJob.
"""
