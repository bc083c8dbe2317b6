#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one call (issue 17; docs/PERFORMANCE.md
# keeps its table). Runs what tools/gpu_bundle.sh built on a CPU machine:
#   1. every backend op on the GPU against the CPU backend (backend_ops_test, cuda);
#   2. every model, each norm placement, dense and MoE, on the GPU against the CPU backend:
#      logits and 64 greedy tokens (device_parity_test, cuda);
#   3. the engine's invariants on the GPU: batch invariance, chunked = whole prefill, prefix
#      cache on = off, preemption, cancellation freeing blocks (engine_test, EngineCoreTest);
#   4. compute-sanitizer's memcheck and racecheck over every op;
#   5. the benchmarks next to their ceilings measured in the same run
#      (tools/bench/gpu_bench.py: copy bandwidth, cuBLAS bf16 rate, PyTorch eager).
# Prints the device, each stage's result and one table; exits non-zero if a test failed.
#
#   tools/gpu_check.sh [BUNDLE]          (default .cache/gpu_bundle)
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=$(cd "${1:-.cache/gpu_bundle}" && pwd)
out=${OUT:-/tmp/spanserve_gpu_check}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
# Where pip's CUDA wheels keep cuBLAS, if the toolkit lacks it.
for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cublas", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export SPANSERVE_CUDA_PLUGIN="$bundle/lib/libspanserve_cuda.so"
export SPANSERVE_SOURCE_DIR="$PWD"
start=$(date +%s)
status=0
echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
ldd "$SPANSERVE_CUDA_PLUGIN" | grep -E "not found|cublas|cudart" || true

stage() {  # stage NAME SECONDS COMMAND...: runs it, keeps its log, prints its summary
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
    echo "PASS ($(grep -E '^\[  PASSED  \]|tests ran' "$out/$name.log" | tail -2 | tr '\n' ' '))"
  else
    status=1
    echo "FAIL (rc $?): last lines:"
    grep -E "FAILED|Failure|error|Expected|Which is|differ|logit" "$out/$name.log" | head -40
    tail -5 "$out/$name.log"
  fi
  # On a GPU machine nothing may skip: a skip means the plugin or the device was not usable.
  if grep -q "SKIPPED" "$out/$name.log"; then
    status=1
    echo "SKIPPED tests (the CUDA backend could not be made):"
    grep -m3 -E "here: " "$out/$name.log"
  fi
}
stage backend_ops 120 "$bundle/bin/backend_ops_test" --gtest_filter='*/cuda' --gtest_brief=1
stage device_parity 240 "$bundle/bin/device_parity_test" --gtest_filter='*_cuda' --gtest_brief=1
SPANSERVE_TEST_BACKEND=cuda stage engine_invariants 240 "$bundle/bin/engine_test" \
  --gtest_filter='EngineCoreTest.*:-EngineCoreTest.Bf16Compute*' --gtest_brief=1
# Out-of-bounds accesses and shared-memory races, which the CPU emulation cannot see.
cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$cs" ]; then
  stage memcheck 150 "$cs" --tool memcheck --error-exitcode 9 "$bundle/bin/backend_ops_test" \
    --gtest_filter='*/cuda' --gtest_brief=1
  stage racecheck 150 "$cs" --tool racecheck --error-exitcode 9 "$bundle/bin/backend_ops_test" \
    --gtest_filter='*/cuda' --gtest_brief=1
fi
echo "== benchmarks"
python3 tools/bench/gpu_bench.py --bin "$bundle/bin" --json "$out/gpu_bench.json" 2>"$out/gpu_bench.log" ||
  { status=1; tail -20 "$out/gpu_bench.log"; }
echo "== done in $(($(date +%s) - start)) s, logs in $out"
exit $status
