// MatMul for Q8_0/Q4_0/Q4_1 weights with integer dot products, internal to kernels/cpu: the
// path of WeightMatrix::precision == MatMulPrecision::kInt8Dot.
//
// Activations. Each row of x is quantized once per call into blocks of 32 (llama.cpp's q8_1):
//   amax = max |x[p]| over the block, d = amax / 127, q[p] = round_nearest_even(x[p] · id)
//   with id = 127 / amax (0 when amax is 0), s = d · Σ q[p]    (f32 arithmetic throughout)
// Weights stay in their GGUF blocks (kernels/quant.h): w[p] = d_w·w_q[p] (Q8_0; Q4_0 with
// w_q = nibble − 8), or d_w·w_q[p] + m_w (Q4_1, w_q = nibble).
//
// Arithmetic of y[i, j], the same for every row of every batch on every instruction set.
// Blocks go in pairs (b, b + 1), b = 0, 2, ...; with c_b = d_w,b · d_x,b (one f32 product):
//   L_lo, L_hi: 8 int32 lanes each, every lane the exact Σ w_q[p]·q[p] over four elements:
//     L_lo lanes 0-3 block b's elements 0-15 (lane l: elements 4l .. 4l + 3), lanes 4-7
//     block b+1's 0-15; L_hi the same for elements 16-31. (VPDPBUSD, or VPMADDUBSW +
//     VPMADDWD without VNNI: the same integers.)
//   C = [c_b ×4, c_(b+1) ×4]; A_lo = fma(C, f32(L_lo), A_lo), A_hi = fma(C, f32(L_hi), A_hi)
//   Q4_1: M = fma([d_w,b, m_w,b, d_w,b+1, m_w,b+1], [d_x,b, s_x,b, d_x,b+1, s_x,b+1], M)
// A last lone block b (k / 32 odd): L = 8 lanes over its elements in order (lane l: 4l ..
//   4l + 3), A_lo = fma(c_b, f32(L), A_lo); Q4_1: M = fma([d_w, m_w, 0, 0], [d_x, s_x, 0, 0], M).
// Then y = simd::HSum(A_lo + A_hi) (+ (M[1] + M[3]) for Q4_1) (+ bias[j]); A and M start at 0.
// So a row's result never depends on the batch, the tiling or the threads, and the VNNI and
// AVX2 kernels agree bit for bit. Against the exact path the error is that of rounding x to
// 8 bits per block: about 1e-3 of Σ|x·w| for typical activations.
//
// Threads: the output features are split over the current pool (common/thread_pool.h). Small
// batches (m·k <= kInt8DotSharedQuantElements) are quantized by every thread for itself,
// saving a second pool job per call; larger ones once, rows split over the threads, into a
// buffer the threads share. Allocates nothing after the first call of the largest shape.
#pragma once

#include <cstdint>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu::internal {

inline constexpr int64_t kInt8DotSharedQuantElements = 16384;

// Whether this CPU has AVX512_VNNI (and the AVX-512 F/BW/VL it builds on).
bool CpuHasAvx512Vnni();

// y = x·Wᵀ (+ bias) for a Q8_0/Q4_0/Q4_1 `w` as described above (w.cols a multiple of 32).
// vnni: use the VNNI kernels (the CPU must have them); otherwise AVX2.
void MatMulInt8Dot(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                   float* y, bool vnni);

// x[rows, k] (k a multiple of 32) quantized as described above, in the kernels' layout
// (matmul_int8dot_kernels.h): q [rows, k], xsc [rows, Int8XscStride(k)], ds [rows,
// Int8DsStride(k)].
void QuantizeRowsInt8(const float* x, int64_t rows, int64_t k, int8_t* q, float* xsc, float* ds);

}  // namespace spanserve::kernels::cpu::internal
