// The bias of a cuBLAS product: y[i, j] += bias[j] (kernels/cuda/ops.h AddBias).
#include "kernels/cuda/ops.h"

namespace spanserve::kernels::cuda {
namespace {

// One thread per element of y, in row-major order.
__global__ void AddBiasKernel(float* y, int64_t m, int64_t n, const void* bias, DType type) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < m * n) y[i] += LoadWeight(bias, type, i % n);
}

}  // namespace

void AddBias(cudaStream_t stream, float* y, int64_t m, int64_t n, const void* bias, DType type) {
  if (m * n == 0) return;
  SPANSERVE_LAUNCH(AddBiasKernel, dim3(BlocksFor(m * n, 256)), dim3(256), 0, stream, y, m, n, bias,
                   type);
}

}  // namespace spanserve::kernels::cuda
