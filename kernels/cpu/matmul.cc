// MatMul: y = x·Wᵀ with register-blocked AVX2 micro-kernels (matmul_rows.inc). Where the CPU
// has AVX-512, batches of more than 4 rows go to matmul_avx512.cc, and smaller ones of the 4-
// and 5-bit formats to matmul_gemv_avx512.cc, with the same results. Weights are f32,
// bf16, f16, or ggml blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K, IQ4_NL, IQ4_XS)
// decoded in registers, 32 elements at a time, with dequant.cc's arithmetic.
//
// Loop nest, per thread (each thread owns a contiguous range of output features n):
//   for each x tile of kXTileRows rows (kept in L2)
//     for each panel of kPanelRows weight rows (widened once per x tile when m > kMaxMr)
//       for each block of <= kMaxMr x rows
//         micro-kernel: MR x rows × NR weight rows, full k
// For decode (m <= kMaxMr) the x tile is the whole batch, so every weight row is read from
// memory exactly once per call and widened in registers.
//
// Batch invariance: each y[i, j] is one 8-lane FMA accumulator over k in order, the fixed
// simd::HSum, then the k-tail in order with std::fma. MR, NR, tiling and threads only decide
// which dot products run side by side, never the order inside one.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/matmul_avx512.h"
#include "kernels/cpu/matmul_bf16dot.h"
#include "kernels/cpu/matmul_int8dot.h"
#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu {
namespace {

#include "kernels/cpu/matmul_rows.inc"

Isa BestIsa() {
  if (!internal::CpuHasAvx512()) return Isa::kAvx2;
  const char* cap = std::getenv("SPANSERVE_MAX_ISA");
  return cap != nullptr && std::strcmp(cap, "avx2") == 0 ? Isa::kAvx2 : Isa::kAvx512;
}

std::atomic<Isa>& MaxIsa() {
  static std::atomic<Isa> isa{BestIsa()};
  return isa;
}

// Thread t's share (of `threads`) of y = x·Wᵀ + b: a static split of n into one contiguous,
// 8-aligned range per thread, so each thread streams its own weight rows once per x tile.
template <WFmt kW>
void MatMulTypedPart(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                     float* y, int64_t t, int64_t threads) {
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t per_thread = ((n + threads - 1) / threads + 7) & ~int64_t{7};
  const int64_t n0 = std::min(n, t * per_thread);
  const int64_t n1 = std::min(n, n0 + per_thread);
  if (n0 >= n1) return;
  const bool has512 = MaxIsa().load(std::memory_order_relaxed) == Isa::kAvx512;
  if (m > kMaxMr && has512) {
    internal::MatMulRowsAvx512(x, m, w, bias, y, n0, n1);
  } else if (m <= kMaxMr && has512 && PairsRows(kW)) {
    // Decode-sized batches of the block formats but Q2_K, Q3_K and IQ4_XS: the same kernels,
    // two weight rows to a register and the 4- and 5-bit blocks decoded by table look-ups
    // where the CPU has AVX-512 (matmul_gemv_avx512.cc).
    internal::MatMulRowsGemvAvx512(x, m, w, bias, y, n0, n1);
  } else {
    const int64_t x_tile =
        std::max<int64_t>(kMaxMr, kXTileBytes / (std::max<int64_t>(k, 1) * 4) / kMaxMr * kMaxMr);
    // Widening a panel once pays off when more than one row block reuses it.
    const bool widen = kW != WFmt::kF32 && m > kMaxMr;
    MatMulRows<kW>(x, m, w, bias, y, n0, n1, x_tile, widen);
  }
}

void MatMulTypedPartOf(const float* x, int64_t m, const MatMulOutput& out, int64_t t,
                       int64_t threads) {
  internal::WithFormat(internal::FormatOf(*out.w), [&](auto f) {
    MatMulTypedPart<decltype(f)::value>(x, m, *out.w, out.bias, out.y, t, threads);
  });
}

void CheckArgs(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
               const float* y) {
  SPANSERVE_CHECK(x != y);
  if (bias != nullptr) SPANSERVE_CHECK_EQ(bias->size, w.rows);
  if (m > 0 && w.quant != QuantType::kNone)
    SPANSERVE_CHECK_EQ(w.cols % QuantBlockElems(w.quant), 0);
}

// Which of MatMul's paths a matrix takes.
enum class Path { kBf16Dot, kInt8Packed, kInt8Dot, kTyped };

Path PathOf(const WeightMatrix& w) {
  if (w.precision == MatMulPrecision::kBf16Dot) return Path::kBf16Dot;
  // (IQ4_NL / Q3_K take the integer path once UploadMatrix has packed or re-encoded them:
  // Int8DotFormat.)
  if (w.precision == MatMulPrecision::kInt8Dot && Int8DotSupports(w.quant)) {
    if (w.packed != nullptr) return Path::kInt8Packed;
    if (Int8DotFormat(w.quant) == w.quant) return Path::kInt8Dot;
  }
  return Path::kTyped;
}

}  // namespace

Isa ActiveIsa() { return MaxIsa().load(); }

Isa SetMaxIsa(Isa isa) {
  if (isa == Isa::kAvx512 && !internal::CpuHasAvx512()) isa = Isa::kAvx2;
  return MaxIsa().exchange(isa);
}

bool CpuHasBf16Dot() { return internal::CpuHasAvx512Bf16() && BestIsa() == Isa::kAvx512; }

bool Bf16DotUsesAmx() { return CpuHasBf16Dot() && internal::CpuHasAmxBf16(); }

bool Int8DotUsesVnni() {
  return internal::CpuHasAvx512Vnni() && MaxIsa().load(std::memory_order_relaxed) == Isa::kAvx512;
}

bool Int8DotUsesAmx() { return Int8DotUsesVnni() && internal::CpuHasAmxInt8(); }

const char* IsaName(Isa isa) { return isa == Isa::kAvx512 ? "avx512" : "avx2"; }

void MatMul(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias, float* y) {
  CheckArgs(x, m, w, bias, y);
  if (m <= 0 || w.rows <= 0) return;
  switch (PathOf(w)) {
    case Path::kBf16Dot:
      SPANSERVE_CHECK(internal::CpuHasAvx512Bf16());
      return internal::MatMulBf16Dot(x, m, w, bias, y);
    case Path::kInt8Packed:
      return internal::MatMulInt8Packed(x, m, w, bias, y);
    case Path::kInt8Dot:
      return internal::MatMulInt8Dot(x, m, w, bias, y, Int8DotUsesVnni());
    case Path::kTyped:
      break;
  }
  const MatMulOutput out{&w, bias, y};
  Parallel([&](int64_t t, int64_t threads) { MatMulTypedPartOf(x, m, out, t, threads); });
}

void MatMulShared(const float* x, int64_t m, const MatMulOutput* outs, int32_t count) {
  if (count <= 0) return;
  const int64_t k = outs[0].w->cols;
  bool all_typed = true, all_packed = true;
  for (int32_t i = 0; i < count; ++i) {
    CheckArgs(x, m, *outs[i].w, outs[i].bias, outs[i].y);
    SPANSERVE_CHECK_EQ(outs[i].w->cols, k);
    const Path path = PathOf(*outs[i].w);
    all_typed = all_typed && path == Path::kTyped;
    all_packed = all_packed && path == Path::kInt8Packed;
  }
  if (m <= 0) return;
  if (all_packed) return internal::MatMulInt8PackedShared(x, m, outs, count);
  if (all_typed) {
    // One job: each thread takes its share of every matrix in turn, as MatMul's would.
    Parallel([&](int64_t t, int64_t threads) {
      for (int32_t i = 0; i < count; ++i) MatMulTypedPartOf(x, m, outs[i], t, threads);
    });
    return;
  }
  for (int32_t i = 0; i < count; ++i) MatMul(x, m, *outs[i].w, outs[i].bias, outs[i].y);
}

void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t n, float* out) {
  const int64_t dim = table.cols;
  if (table.quant != QuantType::kNone) SPANSERVE_CHECK_EQ(dim % QuantBlockElems(table.quant), 0);
  internal::WithFormat(internal::FormatOf(table), [&](auto f) {
    constexpr WFmt kF = decltype(f)::value;
    for (int64_t t = 0; t < n; ++t) {
      SPANSERVE_CHECK(ids[t] >= 0 && ids[t] < table.rows);
      internal::RowToF32<kF>(RowAt<kF>(table.data, ids[t], dim), 0, dim, out + t * dim);
    }
  });
}

namespace internal {

template <WFmt F>
void RowToF32(const void* row, int64_t p0, int64_t p1, float* out) {
  if constexpr (!IsQuant(F)) {
    constexpr DType kT = FloatType(F);
    simd::Widen<kT>(static_cast<const char*>(row) + p0 * static_cast<int64_t>(DTypeSize(kT)),
                    p1 - p0, out);
  } else {
    constexpr QuantType kQ = QuantOf(F);
    const void* blocks =
        static_cast<const char*>(row) + p0 / QuantBlockElems(kQ) * QuantBlockBytes(kQ);
    if constexpr (F == WFmt::kQ8_0) DequantizeQ8_0(blocks, p1 - p0, out);
    if constexpr (F == WFmt::kQ4_0) DequantizeQ4_0(blocks, p1 - p0, out);
    if constexpr (F == WFmt::kQ4_1) DequantizeQ4_1(blocks, p1 - p0, out);
    if constexpr (F != WFmt::kQ8_0 && F != WFmt::kQ4_0 && F != WFmt::kQ4_1) {
      // dequant.cc's scalar loops, vectorized: DecodeGroup computes each value as they do.
      for (int64_t p = 0; p < p1 - p0; p += 32) {
        __m256 wv[4];
        DecodeGroup<F>(blocks, p, wv);
        for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + p + 8 * c, wv[c]);
      }
    }
  }
}
template void RowToF32<WFmt::kF32>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kBF16>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kF16>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ8_0>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ4_0>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ4_1>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ5_0>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ5_1>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ4_K>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ5_K>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ6_K>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ2_K>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kQ3_K>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kIQ4_NL>(const void*, int64_t, int64_t, float*);
template void RowToF32<WFmt::kIQ4_XS>(const void*, int64_t, int64_t, float*);

WFmt FormatOf(const WeightMatrix& w) {
  switch (w.quant) {
    case QuantType::kQ8_0:
      return WFmt::kQ8_0;
    case QuantType::kQ4_0:
      return WFmt::kQ4_0;
    case QuantType::kQ4_1:
      return WFmt::kQ4_1;
    case QuantType::kQ5_0:
      return WFmt::kQ5_0;
    case QuantType::kQ5_1:
      return WFmt::kQ5_1;
    case QuantType::kQ4_K:
      return WFmt::kQ4_K;
    case QuantType::kQ5_K:
      return WFmt::kQ5_K;
    case QuantType::kQ6_K:
      return WFmt::kQ6_K;
    case QuantType::kQ2_K:
      return WFmt::kQ2_K;
    case QuantType::kQ3_K:
      return WFmt::kQ3_K;
    case QuantType::kIQ4_NL:
      return WFmt::kIQ4_NL;
    case QuantType::kIQ4_XS:
      return WFmt::kIQ4_XS;
    case QuantType::kNone:
      break;
  }
  return w.dtype == DType::kBF16 ? WFmt::kBF16 : w.dtype == DType::kF16 ? WFmt::kF16 : WFmt::kF32;
}

}  // namespace internal

}  // namespace spanserve::kernels::cpu
