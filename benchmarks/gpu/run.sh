#!/usr/bin/env bash
# The prepared GPU check of issue 18, for one GPU machine with no network (one H200: PyTorch 2.11
# + CUDA 13, Python 3.12, timm; no pydantic, no faiss). At most 8 minutes:
#   1. installs the Python packages dinoflow needs and the machine lacks, from the wheels that
#      travel with this script (benchmarks/gpu/wheels/, filled by fetch_wheels.sh on a machine
#      with network; not committed), into $OUT/site — nothing is fetched;
#   2. bench.py: bf16 step images/s, MFU (989 TFLOP/s dense, and a bf16 matmul measured in the
#      same run) and peak memory for ViT-S/14, ViT-B/14, ViT-L/14 at 224/98 px, 2 + 8 crops,
#      K = 65,536, batch 64, compile and packing on and off (time-budgeted: what does not fit is
#      reported as skipped);
#   3. the CUDA-only tests (pytest -m cuda).
#
#   benchmarks/gpu/run.sh             # on the GPU machine, from the repository root or anywhere
#   benchmarks/gpu/run.sh --dry-run   # on a CPU: tiny shapes, every code path (the test suite runs it)
#
# Results go to $OUT (the device tool's output folder) or benchmarks/gpu/out: results.jsonl,
# bench.log, tests.log. Exit status: non-zero when a step failed (the logs say which).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dry=""
[[ "${1:-}" == "--dry-run" ]] && dry="--dry-run"
PY="${PYTHON:-python3}"
out="${OUT:-$here/out}"
mkdir -p "$out"
t0=$(date +%s)
status=0

# 1. packages: import names → wheel names
need=(pydantic:pydantic yaml:PyYAML numpy:numpy PIL:pillow tqdm:tqdm pytest:pytest)
missing=()
for pair in "${need[@]}"; do
  "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
  if ! ls "$here"/wheels/*.whl >/dev/null 2>&1; then
    echo "missing ${missing[*]} and no wheels in $here/wheels: run benchmarks/gpu/fetch_wheels.sh where there is network" >&2
    exit 2
  fi
  echo "installing ${missing[*]} from $here/wheels (no index)"
  "$PY" -m pip install -q --no-index --find-links "$here/wheels" --target "$out/site" "${missing[@]}" || exit 2
  export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo/src:$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$out/inductor-cache}"
cd "$repo"

# 2. the benchmark: configurations start until 270 s have passed; the hard limit leaves room for a
# last ViT-L compile and for the tests
timeout 360 "$PY" "$here/bench.py" $dry --budget-s "${BENCH_BUDGET_S:-270}" --out "$out" 2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
((rc != 0)) && { echo "bench.py exited $rc (see $out/bench.log)"; status=1; }

# 3. the CUDA-only tests (on a CPU they are collected and skip: no device)
timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/gpu tests/data/test_augment.py 2>&1 | tee "$out/tests.log"
rc=${PIPESTATUS[0]}
((rc != 0)) && { echo "CUDA tests exited $rc (see $out/tests.log)"; status=1; }

echo "run.sh: $(( $(date +%s) - t0 )) s, status $status"
exit $status
