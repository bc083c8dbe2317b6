// Dense products with weights in nn.Linear layout.
#pragma once

#include <cstdint>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu {

// y[m, n] = x[m, k] · W[n, k]ᵀ + bias[n]      (n = w.rows, k = w.cols; bias may be null)
// x, y: f32 row-major, y must not alias x. Parallel over n with OpenMP.
// Batch invariance (the engine relies on it): every y[i, j] is computed with one fixed
// reduction order over k that does not depend on m, on i, on tiling or on thread count,
// so a row's result is bit-identical whatever else is in the batch.
// Allocates nothing on the heap after the first call of a thread.
// Batches (m > 4) run AVX-512 micro-kernels where the CPU has them, with results
// bit-identical to the AVX2 kernels (see matmul_avx512.h). Block-quantized weights
// (w.quant) give exactly the results of their dequantized f32 copy. A bf16 matrix with
// w.precision == kBf16Dot takes the bf16 dot-product path for every m (matmul_bf16dot.h;
// the CPU must have it: CpuHasBf16Dot(); on AMX tiles where Bf16DotUsesAmx() and k % 32 == 0). A
// matrix of a format the integer kernels take (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K;
// the CPU backend re-encodes IQ4_NL and Q3_K to Q8_0 and Q6_K at upload: Int8DotFormat) with
// w.precision == kInt8Dot quantizes x to 8-bit blocks and takes the integer dot-product path for
// every m (matmul_int8dot.h; VNNI where Int8DotUsesVnni(), else AVX2, the same bits either way;
// a matrix with a repacked copy, w.packed, takes the packed kernels and their arithmetic);
// other formats ignore kInt8Dot and multiply exactly.
void MatMul(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias, float* y);

// MatMul of one x by `count` matrices of the same cols (Q, K and V; gate and up): each
// outs[i].y bit for bit as MatMul gives it. Matrices that all take the packed integer kernels
// share one quantization of x and one job; matrices that all multiply exactly share one job;
// any other mix runs one MatMul each.
void MatMulShared(const float* x, int64_t m, const MatMulOutput* outs, int32_t count);

// The instruction sets MatMul can use.
enum class Isa { kAvx2, kAvx512 };

// The widest instruction set MatMul may use: the best this CPU has, unless the environment
// variable SPANSERVE_MAX_ISA=avx2 says otherwise. Results are the same bits on either; tests
// and benchmarks switch with SetMaxIsa, which returns the setting it replaced (a request for
// AVX-512 on a CPU without it gets AVX2).
Isa ActiveIsa();
Isa SetMaxIsa(Isa isa);
const char* IsaName(Isa isa);

// Whether MatMulPrecision::kBf16Dot may run here: the CPU has AVX512_BF16 and the
// environment does not cap the process at AVX2 (SPANSERVE_MAX_ISA=avx2).
bool CpuHasBf16Dot();

// Whether MatMulPrecision::kBf16Dot multiplies on AMX tiles (matrices with k % 32 == 0): the
// CPU has AMX-BF16, the OS grants the tile state, and SPANSERVE_MAX_ISA is not set.
bool Bf16DotUsesAmx();

// Whether MatMulPrecision::kInt8Dot runs its VNNI kernels now: the CPU has AVX512_VNNI and
// MatMul may use AVX-512 (ActiveIsa(); SetMaxIsa(Isa::kAvx2) selects the AVX2 kernels, which
// every CPU this build runs on has).
bool Int8DotUsesVnni();

// Whether packed kInt8Dot matrices (Q8_0, Q4_0, Q4_1 on a VNNI CPU) take their integer dots
// from AMX tiles in calls of 32 rows or more: Int8DotUsesVnni(), the CPU has AMX-INT8, the OS
// grants the tile state, and SPANSERVE_MAX_ISA is not set. The bits are the VNNI kernels'.
bool Int8DotUsesAmx();

// out[t, :] = row ids[t] of `table` ([vocab, dim]) widened to f32. ids must be in range.
void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t n, float* out);

}  // namespace spanserve::kernels::cpu
