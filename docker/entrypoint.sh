#!/bin/sh
# dinoflow image entrypoint for `docker run`: tini (PID 1) reaps torchrun's workers; this only
# runs the command. Caches and HOME are set as ENV in the Dockerfiles, because Kubernetes'
# `command` (Kubeflow steps, TrainJobs) replaces this entrypoint.
set -eu
exec "$@"
