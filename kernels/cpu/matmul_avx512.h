// AVX-512 path of MatMul for batches (m > 4), internal to kernels/cpu, and the weight
// formats both paths share.
//
// The results are bit-identical to the AVX2 kernels in matmul.cc: every y[i, j] is still
// one 8-lane accumulator over k in order, simd::HSum, then the k-tail in order. A 16-lane
// register carries the 8-lane accumulators of two x rows side by side (the rows packed in
// pairs, interleaved by 8 elements), and each chunk of 8 weights is broadcast to both
// halves; the epilogue reduces both halves in HSum's order. So the instruction set changes
// the speed, never a bit of the output, and batch invariance holds across the two paths.
#pragma once

// GCC 12's _mm512_undefined_ps (inside _mm512_broadcast_f32x8, the AVX-512 reductions, ...)
// reads itself to make an undefined value, which -Wuninitialized reports at every use in the
// AVX-512 kernels; nothing there is uninitialized. The kernels include this header first.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>
#include <type_traits>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu::internal {

// A weight storage format: the three float types and the block-quantized ones.
enum class WFmt {
  kF32,
  kBF16,
  kF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kQ2_K,
  kQ3_K,
  kIQ4_NL,
  kIQ4_XS
};

constexpr bool IsQuant(WFmt f) { return f != WFmt::kF32 && f != WFmt::kBF16 && f != WFmt::kF16; }

// The DType of a float format.
constexpr DType FloatType(WFmt f) {
  return f == WFmt::kBF16 ? DType::kBF16 : f == WFmt::kF16 ? DType::kF16 : DType::kF32;
}

constexpr QuantType QuantOf(WFmt f) {
  switch (f) {
    case WFmt::kQ8_0:
      return QuantType::kQ8_0;
    case WFmt::kQ4_0:
      return QuantType::kQ4_0;
    case WFmt::kQ4_1:
      return QuantType::kQ4_1;
    case WFmt::kQ5_0:
      return QuantType::kQ5_0;
    case WFmt::kQ5_1:
      return QuantType::kQ5_1;
    case WFmt::kQ4_K:
      return QuantType::kQ4_K;
    case WFmt::kQ5_K:
      return QuantType::kQ5_K;
    case WFmt::kQ6_K:
      return QuantType::kQ6_K;
    case WFmt::kQ2_K:
      return QuantType::kQ2_K;
    case WFmt::kQ3_K:
      return QuantType::kQ3_K;
    case WFmt::kIQ4_NL:
      return QuantType::kIQ4_NL;
    case WFmt::kIQ4_XS:
      return QuantType::kIQ4_XS;
    default:
      return QuantType::kNone;
  }
}

// Bytes of one row of `cols` elements.
template <WFmt F>
constexpr int64_t RowBytes(int64_t cols) {
  if constexpr (IsQuant(F)) {
    return cols / QuantBlockElems(QuantOf(F)) * QuantBlockBytes(QuantOf(F));
  } else {
    return cols * static_cast<int64_t>(DTypeSize(FloatType(F)));
  }
}

template <WFmt F>
inline const void* RowAt(const void* base, int64_t row, int64_t cols) {
  return static_cast<const char*>(base) + row * RowBytes<F>(cols);
}

// Elements [p0, p1) of one row (p0, p1 multiples of 8; of the block for quantized formats),
// widened or dequantized to f32 at out[0, p1 - p0).
template <WFmt F>
void RowToF32(const void* row, int64_t p0, int64_t p1, float* out);

WFmt FormatOf(const WeightMatrix& w);

// fn(std::integral_constant<WFmt, f>{}): runs a format-templated function for a run-time f.
template <typename Fn>
decltype(auto) WithFormat(WFmt f, Fn&& fn) {
  switch (f) {
    case WFmt::kBF16:
      return fn(std::integral_constant<WFmt, WFmt::kBF16>{});
    case WFmt::kF16:
      return fn(std::integral_constant<WFmt, WFmt::kF16>{});
    case WFmt::kQ8_0:
      return fn(std::integral_constant<WFmt, WFmt::kQ8_0>{});
    case WFmt::kQ4_0:
      return fn(std::integral_constant<WFmt, WFmt::kQ4_0>{});
    case WFmt::kQ4_1:
      return fn(std::integral_constant<WFmt, WFmt::kQ4_1>{});
    case WFmt::kQ5_0:
      return fn(std::integral_constant<WFmt, WFmt::kQ5_0>{});
    case WFmt::kQ5_1:
      return fn(std::integral_constant<WFmt, WFmt::kQ5_1>{});
    case WFmt::kQ4_K:
      return fn(std::integral_constant<WFmt, WFmt::kQ4_K>{});
    case WFmt::kQ5_K:
      return fn(std::integral_constant<WFmt, WFmt::kQ5_K>{});
    case WFmt::kQ6_K:
      return fn(std::integral_constant<WFmt, WFmt::kQ6_K>{});
    case WFmt::kQ2_K:
      return fn(std::integral_constant<WFmt, WFmt::kQ2_K>{});
    case WFmt::kQ3_K:
      return fn(std::integral_constant<WFmt, WFmt::kQ3_K>{});
    case WFmt::kIQ4_NL:
      return fn(std::integral_constant<WFmt, WFmt::kIQ4_NL>{});
    case WFmt::kIQ4_XS:
      return fn(std::integral_constant<WFmt, WFmt::kIQ4_XS>{});
    case WFmt::kF32:
      break;
  }
  return fn(std::integral_constant<WFmt, WFmt::kF32>{});
}

// fn(std::integral_constant<int, A>{}, std::integral_constant<int, B>{}) for run-time
// 1 <= a <= kMaxA and 1 <= b <= kMaxB: runs a micro-kernel templated on its shape (x rows or
// pairs × weight rows) for the shape of a block at the edge of the matrix.
template <int kMaxA, int kMaxB, int A = 1, int B = 1, typename Fn>
void WithShape(int a, int b, Fn&& fn) {
  if constexpr (A < kMaxA) {
    if (a != A) return WithShape<kMaxA, kMaxB, A + 1, B>(a, b, fn);
  }
  if constexpr (B < kMaxB) {
    if (b != B) return WithShape<kMaxA, kMaxB, A, B + 1>(a, b, fn);
  }
  fn(std::integral_constant<int, A>{}, std::integral_constant<int, B>{});
}

// Whether this CPU runs the AVX-512 path (AVX-512 F/DQ/BW/VL), before SetMaxIsa.
bool CpuHasAvx512();

// y[:, n0:n1) for the m rows of x; called by every OpenMP thread of MatMul for its own
// range of weight rows. Allocates nothing after the first call of a thread.
void MatMulRowsAvx512(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y, int64_t n0, int64_t n1);

// MatMul's output features [n0, n1) for a batch of at most 4 rows (kMaxMr) of a 4- or 5-bit
// format (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K): matmul.cc's kernels with each group of
// 32 decoded by table look-ups (matmul_gemv_avx512.cc); bit-identical to them. AVX-512 only.
void MatMulRowsGemvAvx512(const float* x, int64_t m, const WeightMatrix& w,
                          const WeightVector* bias, float* y, int64_t n0, int64_t n1);

}  // namespace spanserve::kernels::cpu::internal
