// The CPU backend: kernels::Backend over the CPU kernels of this folder. Device memory is
// host memory; weights are read in place from their (memory-mapped) files. It owns the
// compute threads (OpenMP): their count is set at each step's start.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace spanserve::kernels::cpu {

std::unique_ptr<Backend> CreateCpuBackend(const BackendOptions& options);

}  // namespace spanserve::kernels::cpu
