#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ with what the GPU machine lacks for run.sh: pydantic and its own
# needs (pydantic_core, annotated_types, typing_inspection; typing_extensions, installed there only
# when the machine's is older than pydantic needs), for Python 3.12 on manylinux x86-64,
# at the project's constraints.txt pins (~2.5 MB; the machine has torch, PyYAML, numpy, Pillow,
# typing_extensions and pytest). Run it where PyPI is reachable; the folder is git-ignored, so the
# device call names it: carry=["benchmarks/gpu/wheels"].
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pin() {
  local p
  p="$(grep -i "^$1==" "$repo/constraints.txt" | head -1)"
  [[ -n "$p" ]] || { echo "constraints.txt pins no $1" >&2; exit 2; }
  echo "$p"
}
rm -rf "$here/wheels"
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$here/wheels" "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" "$(pin typing-inspection)" "$(pin typing_extensions)"
du -sh "$here/wheels"
