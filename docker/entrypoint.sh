#!/bin/sh
# dinoflow image entrypoint: a writable HOME and cache dirs even with a read-only root
# filesystem (pods mount an emptyDir at /tmp), then run the given command as PID 1's child.
set -eu
export HOME="${HOME:-/tmp}"
export MPLCONFIGDIR="${MPLCONFIGDIR:-/tmp/matplotlib}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/torchinductor}"
exec "$@"
