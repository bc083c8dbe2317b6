// AVX-512 path of MatMul for batches (m > 4), internal to kernels/cpu.
//
// The results are bit-identical to the AVX2 kernels in matmul.cc: every y[i, j] is still
// one 8-lane accumulator over k in order, simd::HSum, then the k-tail in order. A 16-lane
// register carries the 8-lane accumulators of two weight rows side by side (rows 2q and
// 2q+1 of a panel, interleaved by 8 elements when the panel is widened), and the x chunk is
// broadcast to both halves. So the instruction set changes the speed, never a bit of the
// output, and batch invariance holds across the two paths.
#pragma once

#include <cstdint>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu::internal {

// Whether this CPU runs the AVX-512 path (AVX-512 F/DQ/BW/VL), before SetMaxIsa.
bool CpuHasAvx512();

// y[:, n0:n1) for the m rows of x; called by every OpenMP thread of MatMul for its own
// range of weight rows. Allocates nothing after the first call of a thread.
void MatMulRowsAvx512(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y, int64_t n0, int64_t n1);

}  // namespace spanserve::kernels::cpu::internal
