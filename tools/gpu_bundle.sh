#!/usr/bin/env bash
# Makes .cache/gpu_bundle, what tools/gpu_check.sh runs on a GPU machine. That machine has the
# CUDA toolkit (nvcc, cuBLAS), CMake, ninja and PyTorch but none of the project's Debian
# libraries and no network, so the CUDA plugin, the CUDA tests and the benchmarks are built
# here and travel with the shared libraries they need that are neither glibc's nor CUDA's
# (gRPC-free: the tests and benchmarks link only Abseil, GoogleTest and the C++ runtime).
# The plugin holds sm_80 and sm_90 machine code and sm_90 PTX.
#
#   tools/gpu_bundle.sh [BUILD_DIR]      (default build/release; configured with CUDA on)
# Then, on the device tool: run with carry [".cache/gpu_bundle"] the command
#   tools/gpu_check.sh .cache/gpu_bundle
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
grep -q '^SPANSERVE_CUDA:BOOL=ON' "$build/CMakeCache.txt" || {
  echo "gpu_bundle: $build is not configured with SPANSERVE_CUDA=ON (is nvcc installed?)" >&2
  exit 1
}
bins=(backend_ops_test device_parity_test engine_test spanserve_model_bench spanserve_engine_bench)
cmake --build "$build" --target spanserve_cuda "${bins[@]}"
out=.cache/gpu_bundle
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for b in "${bins[@]}"; do
  path=$(find "$build" -type f -name "$b" -perm -u+x | head -1)
  cp "$path" "$out/bin/"
done
cp "$build/lib/libspanserve_cuda.so" "$out/lib/"
# Every shared library they load, except glibc's (the loader, libc, libm, ...) and CUDA's
# (the device machine has its own toolkit and driver).
for f in "$out"/bin/* "$out/lib/libspanserve_cuda.so"; do
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | grep -vE '/(ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libcuda|libcudart|libcublas|libcublasLt|libnvidia)[.-]' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
strip --strip-unneeded "$out"/bin/* "$out"/lib/*.so* 2>/dev/null || true
du -sh "$out"
