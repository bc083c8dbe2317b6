// MatMul for bf16 weights with bf16 dot products (AVX512_BF16), internal to kernels/cpu:
// the path of WeightMatrix::precision == MatMulPrecision::kBf16Dot.
//
// Each row of x is rounded to bf16 (round to nearest even) once per call. Then, for a matrix
// whose k is a positive multiple of 32 on a CPU with AMX-BF16 (CpuHasAmxBf16), y[i, j] is one f32
// accumulator over k in tiles of 32, each tile one TDPBF16PS (matmul_amx.cc); otherwise it is
// one 16-lane accumulator over k in chunks of 32, each chunk one VDPBF16PS (lane l adds the
// products of elements 2l and 2l + 1), the k-tail a zero-padded last chunk, then
// _mm512_reduce_add_ps. Then the bias. Which of the two a matrix takes depends on its k and
// the CPU alone, and which rows are computed side by side never changes these operations, so
// results do not depend on the batch (m, other rows, threads); they differ from the exact
// path's by the rounding of x to bf16 (relative 2^-9 per element).
#pragma once

#include <cstdint>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu::internal {

// Whether this CPU has AVX512_BF16 (and the AVX-512 F/BW/VL it builds on).
bool CpuHasAvx512Bf16();

// Whether this CPU has AMX-TILE and AMX-BF16 and the OS grants this process the tile state
// (asked once); false when SPANSERVE_MAX_ISA caps the instruction sets.
bool CpuHasAmxBf16();

// The AMX path of MatMulBf16Dot (matmul_amx.cc): y = x·Wᵀ (+ bias) from x already rounded to
// bf16 (xb: m rows of k, stride kp); k > 0, k % 32 == 0 and CpuHasAmxBf16().
void MatMulBf16Amx(const uint16_t* xb, int64_t kp, int64_t m, const WeightMatrix& w,
                   const WeightVector* bias, float* y);

// y = x·Wᵀ (+ bias) for bf16 `w` as described above. The CPU must have AVX512_BF16.
void MatMulBf16Dot(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                   float* y);

}  // namespace spanserve::kernels::cpu::internal
