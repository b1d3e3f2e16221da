#!/usr/bin/env bash
# The prepared GPU check: one call on the device machine (one H100 or H200, PyTorch 2.11 + CUDA 13,
# Python 3.12, no network, no pydantic), at most 5 minutes, so that a second try fits the lease:
#
#   run(command="benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=360)
#
# benchmarks/gpu/wheels is git-ignored and travels only when the call's carry names it; fill it
# first, here, with benchmarks/gpu/fetch_wheels.sh (pydantic and its needs, ~3 MB).
#   1. installs those wheels into /tmp (nothing is fetched; nothing lands in $OUT);
#   2. bench.py, most important first: compiled ViT-L/14 through FSDP2 (bf16 parameters and
#      compute) on a 1-rank NCCL group, 224/98 px, 2 + 8 crops, K 65,536, batch 64: images/s and
#      MFU with the GPU augmentation in the step, CUDA-event times per phase, a 2-step profiler
#      table of the 25 costliest kernels, memory, compile seconds, the SDPA kernel, clocks and
#      power; then selective checkpointing, eager and full checkpointing while the budget lasts;
#   3. the CUDA-only tests (pytest -m cuda);
#   4. the summary table, the very last output.
#
#   benchmarks/gpu/run.sh             # on the GPU machine, from anywhere
#   benchmarks/gpu/run.sh --dry-run   # on a CPU: tiny shapes, every code path (the test suite runs it)
#
# $OUT (the device tool's folder, else benchmarks/gpu/out) gets 5 files: results.json, bench.log,
# kernels.txt, tests.log, summary.txt. Caches and installs stay in /tmp. Exit status non-zero when
# a step failed (the summary says which).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dry=""
[[ "${1:-}" == "--dry-run" ]] && dry="--dry-run"
PY="${PYTHON:-python3}"
out="${OUT:-$here/out}"
wheels="${DINOFLOW_GPU_WHEELS:-$here/wheels}"
scratch="$(mktemp -d /tmp/dinoflow-gpu.XXXXXX)"
mkdir -p "$out"
t0=$(date +%s)
status=0

# 1. the packages the machine lacks, from the carried wheels
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ! ls "$wheels"/pydantic-*.whl >/dev/null 2>&1; then
    echo "run.sh: pydantic is missing and $wheels holds no wheels: run benchmarks/gpu/fetch_wheels.sh" \
      "here, then call run(command=\"benchmarks/gpu/run.sh\", carry=[\"benchmarks/gpu/wheels\"], timeout_s=360)" >&2
    exit 2
  fi
  whl=("$wheels"/pydantic-*.whl "$wheels"/pydantic_core-*.whl "$wheels"/annotated_types-*.whl "$wheels"/typing_inspection-*.whl)
  # typing_extensions only when the machine's is older than pydantic needs (torch imports it too)
  "$PY" -c "import importlib.metadata as m, sys
sys.exit(tuple(int(x) for x in m.version('typing_extensions').split('.')[:2]) < (4, 16))" 2>/dev/null ||
    whl+=("$wheels"/typing_extensions-*.whl)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" "${whl[@]}" || {
    echo "run.sh: installing ${whl[*]} failed" >&2
    exit 2
  }
  export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo/src:$repo:$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$scratch/inductor" TRITON_CACHE_DIR="$scratch/triton" PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1
cd "$repo"

# 2. the benchmark: configurations start while 150 s have not passed; the hard limit leaves the tests room
timeout 210 "$PY" "$here/bench.py" $dry --budget-s "${BENCH_BUDGET_S:-150}" --out "$out" >"$out/bench.log" 2>&1
rc=$?
tail -n 40 "$out/bench.log"
((rc != 0)) && { echo "bench.py exited $rc (see bench.log)"; status=1; }

# 3. the CUDA-only tests (on a CPU they are collected and skip: no device)
timeout 75 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/gpu tests/data/test_augment.py >"$out/tests.log" 2>&1
trc=$?
tail -n 5 "$out/tests.log"
((trc != 0)) && { echo "CUDA tests exited $trc (see tests.log)"; status=1; }
rm -rf "$scratch"

# 4. the summary, last
"$PY" "$here/summary.py" "$out/results.json" --bench-rc "$rc" --tests-rc "$trc" --tests-log "$out/tests.log" \
  --seconds "$(($(date +%s) - t0))" | tee "$out/summary.txt"
exit $status
