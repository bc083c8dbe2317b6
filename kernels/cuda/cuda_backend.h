// The CUDA backend (DESIGN.md §3): kernels::Backend over the kernels of kernels/cuda/ops.h,
// cuBLAS for the bf16 products of batches, and device memory. Built into the plugin
// libspanserve_cuda.so (kernels/cuda/plugin.cc), which the server dlopens for --device cuda,
// and, against the CPU emulation (kernels/cuda/compat.h), into the tests' "cuda_emu"
// backend.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace spanserve::kernels::cuda {

// The backend on CUDA device 0. FAILED_PRECONDITION naming what is missing when there is no
// device or no driver.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options);

}  // namespace spanserve::kernels::cuda
