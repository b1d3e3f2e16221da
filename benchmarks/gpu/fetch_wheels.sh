#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ with the pure-Python and binary wheels run.sh installs on the GPU
# machine (Python 3.12, manylinux x86-64, no network there). Run it where PyPI is reachable;
# ~30 MB, not committed (.gitignore). The versions are the project's constraints.txt pins.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pin() { grep -i "^$1==" "$repo/constraints.txt" | head -1; }
pkgs=("$(pin pydantic)" "$(pin pydantic_core)" "$(pin PyYAML)" "$(pin numpy)" "$(pin pillow)" "$(pin tqdm)" "$(pin pytest)")
"${PYTHON:-python3}" -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$here/wheels" "${pkgs[@]}"
ls -la "$here/wheels"
