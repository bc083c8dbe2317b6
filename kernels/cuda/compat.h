// What the CUDA kernels (kernels/cuda/*.cuh) may use, in one place, so the same sources build
// both with nvcc for the GPU and, with SPANSERVE_CUDA_EMULATION defined, with the host
// compiler against a CPU emulation of the CUDA execution model (kernels/cuda/emu.h): blocks
// run one after another, the threads of a block as fibers that switch at __syncthreads and
// at warp shuffles. The emulation is for testing on machines without a GPU; it is slow, and it
// checks arithmetic, indexing and barrier placement, not memory-model races.
//
// The subset kernels keep to:
//   __global__ / __device__ / __forceinline__, static __shared__ arrays inside kernels, and
//   SPANSERVE_DYNAMIC_SHARED(type, name) for the launch's dynamic shared memory;
//   threadIdx / blockIdx / blockDim / gridDim, warpSize (32);
//   __syncthreads(), reached by every thread of the block;
//   __shfl_xor_sync / __shfl_sync / __shfl_down_sync with a full mask, reached by every lane
//   of the warp (blocks are whole warps);
//   expf, logf, sqrtf, tanhf, fmaf, fmaxf, fminf, fabsf, INFINITY (f32 math of <cmath>);
//   the bf16/f16 helpers below (bits in uint16_t, no cuda_bf16.h types);
//   SPANSERVE_LAUNCH(kernel, grid, block, shared_bytes, stream, args...).
// No atomics: results must not depend on scheduling.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/dtype.h"

#if defined(SPANSERVE_CUDA_EMULATION)
#include "kernels/cuda/emu.h"
#define SPANSERVE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                       \
  ::spanserve::kernels::cuda::emu::Launch((kernel), (grid), (block), (shared_bytes), (stream), \
                                          ##__VA_ARGS__)
#define SPANSERVE_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::spanserve::kernels::cuda::emu::DynamicShared())
#define SPANSERVE_HD
#else
#include <cuda_runtime.h>
#define SPANSERVE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  (kernel)<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#define SPANSERVE_DYNAMIC_SHARED(type, name)                   \
  extern __shared__ unsigned char spanserve_dynamic_shared_[]; \
  type* name = reinterpret_cast<type*>(spanserve_dynamic_shared_)
#define SPANSERVE_HD __host__ __device__
#endif

namespace spanserve::kernels::cuda {

// bf16 / f16 bits <-> f32, bit-exact with common/dtype.h (and so with the CPU backend).
SPANSERVE_HD __forceinline__ float Bf16BitsToF32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
SPANSERVE_HD __forceinline__ uint16_t F32ToBf16Bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
// IEEE half, exact (subnormals, inf, NaN).
SPANSERVE_HD __forceinline__ float F16BitsToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise.
    exp = 113u;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// Element i of a weight array of `type` (kernels/types.h WeightAt, on the device).
SPANSERVE_HD __forceinline__ float LoadWeight(const void* data, DType type, int64_t i) {
  switch (type) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kBF16:
      return Bf16BitsToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16:
      return F16BitsToF32(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0f;
}

// Blocks of `threads` threads covering n items (at least one block).
inline unsigned BlocksFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace spanserve::kernels::cuda
