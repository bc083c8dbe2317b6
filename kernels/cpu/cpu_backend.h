// The CPU backend: kernels::Backend over the CPU kernels of this folder. Device memory is
// host memory; weights are read in place from their (memory-mapped) files. It holds the
// compute threads (common/thread_pool.h: the process's pool of that size, which the calling
// thread joins), never more than the CPUs the process may use.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace spanserve::kernels::cpu {

std::unique_ptr<Backend> CreateCpuBackend(const BackendOptions& options);

}  // namespace spanserve::kernels::cpu
