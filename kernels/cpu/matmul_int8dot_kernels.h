// The int8 dot-product kernels' shared parts (matmul_int8dot.h), internal to kernels/cpu: the
// quantized activations' layout and the loop over panels and row blocks, templated on the
// micro-kernels of one instruction set. matmul_int8dot.cc instantiates it with the AVX2
// micro-kernels and matmul_int8dot_vnni.cc, compiled with AVX512_VNNI, with the VNNI ones;
// each file's kernel type lives in its own anonymous namespace, so the two instantiations are
// distinct functions and the linker never swaps one for the other.
//
// Quantized activations, per row of x (k / 32 blocks, taken in pairs (b, b + 1), b even):
//   q:   k int8. A pair is 64 bytes: block b's elements 0-15, block b+1's 0-15, block b's
//        16-31, block b+1's 16-31 (the order in which two Q4 blocks' nibbles unpack). A last
//        lone block (k / 32 odd) is 32 bytes in element order.
//   xsc: 8 f32 per pair: d_b four times, then d_(b+1) four times (a lone block: its d eight
//        times), so the per-lane scales are one multiply.
//   ds:  2 f32 per block (d, s), then 2 zero f32 of padding.
//
// Loop nest, per thread over its own output features [n0, n1):
//   for each x tile (<= kXTileBytes of quantized rows)
//     for each panel of <= kPanelRows weight rows (read from memory once per tile, then L1)
//       for each block of <= Kernel::kMaxMr x rows: micro-kernel MR × Kernel::Nr(MR), full k
#pragma once

#include "kernels/cpu/matmul_avx512.h"  // first: it includes <immintrin.h> (see there)

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu::internal {

// Row strides (elements) of the quantized activations' arrays for a row of k.
constexpr int64_t Int8XscStride(int64_t k) { return 8 * ((k / 32 + 1) / 2); }
constexpr int64_t Int8DsStride(int64_t k) { return 2 * (k / 32) + 2; }

// One call's operands, as every thread sees them.
struct Int8DotArgs {
  const int8_t* q;    // [m, k]
  const float* xsc;   // [m, Int8XscStride(k)]
  const float* ds;    // [m, Int8DsStride(k)]
  int64_t m;
  const WeightMatrix* w;
  const WeightVector* bias;  // or null
  float* y;                  // [m, n]
};

// y[:, n0:n1) for the m rows of x; called by every thread of MatMulInt8Dot for its range.
void Int8DotRowsAvx2(const Int8DotArgs& a, int64_t n0, int64_t n1);
void Int8DotRowsVnni(const Int8DotArgs& a, int64_t n0, int64_t n1);

namespace int8dot {

constexpr int64_t kXTileBytes = 256 << 10;
constexpr int64_t kPanelRows = 24;  // a multiple of every Nr

// One micro-kernel call: MR x rows × NR weight rows over the whole k.
struct MicroArgs {
  const int8_t* q;  // MR rows, strides as Int8DotArgs
  const float* xsc;
  const float* ds;
  int64_t k;
  const uint8_t* w;  // NR rows of k / 32 blocks, stride row_bytes
  int64_t row_bytes;
  bool prefetch;      // prefetch the rows after these NR (they come from memory)
  const float* bias;  // [NR] or null
  float* y;           // [MR, NR], stride ldy
  int64_t ldy;
};

// Helpers of both instruction sets' micro-kernels. Each takes the kernel type as its first
// template argument so that its instantiations stay with that kernel's file.

// 16 bytes at `lo` and 16 at `hi` as one register: [lo | hi].
template <class Kernel>
[[gnu::always_inline]] inline __m256i Load2x16(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(hi),
                             reinterpret_cast<const __m128i*>(lo));
}

// The f16 pair at the start of two blocks (d and m for Q4_1; d and two quants otherwise),
// widened: [d_0, m_0, d_1, m_1].
template <class Kernel>
[[gnu::always_inline]] inline __m128 PairScales(const uint8_t* b0, const uint8_t* b1) {
  int32_t v0, v1;
  std::memcpy(&v0, b0, 4);
  std::memcpy(&v1, b1, 4);
  return _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(v0), v1, 1));
}

// The same for one block: [d, m, 0, 0].
template <class Kernel>
[[gnu::always_inline]] inline __m128 BlockScales(const uint8_t* b) {
  int32_t v;
  std::memcpy(&v, b, 4);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(v));
}

// Block b's weights for the lone-block step: the unsigned operand `u` and (Q8_0, Q4_0) the
// signed weights `sw` whose signs move onto x, in element order.
template <class Kernel, QuantType kQ>
[[gnu::always_inline]] inline void LoneWeights(const uint8_t* block, __m256i* u, __m256i* sw) {
  if constexpr (kQ == QuantType::kQ8_0) {
    *sw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
  } else {
    const uint8_t* qs = block + (kQ == QuantType::kQ4_1 ? 4 : 2);
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i nibbles = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1),
        _mm256_set1_epi8(0x0f));
    if constexpr (kQ == QuantType::kQ4_1) {
      *u = nibbles;
      return;
    }
    *sw = _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
  }
  *u = _mm256_sign_epi8(*sw, *sw);
}

// The lone last block (k / 32 odd) of MR × NR dot products, into their A_lo and M.
template <class Kernel, QuantType kQ, int MR, int NR>
[[gnu::always_inline]] inline void LoneBlock(const MicroArgs& a, __m256 (&acc)[MR][NR],
                                             __m128 (&mins)[MR][NR]) {
  const int64_t b = a.k / 32 - 1;
  const int64_t ld_xsc = Int8XscStride(a.k);
  const int64_t ld_ds = Int8DsStride(a.k);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const uint8_t* block = a.w + r * a.row_bytes + b * QuantBlockBytes(kQ);
    __m256i u, sw;
    LoneWeights<Kernel, kQ>(block, &u, &sw);
    const __m128 ws = BlockScales<Kernel>(block);
    const __m256 wd = _mm256_broadcastss_ps(ws);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + i * a.k + 32 * b));
      if constexpr (kQ != QuantType::kQ4_1) xv = _mm256_sign_epi8(xv, sw);
      const __m256 c = _mm256_mul_ps(wd, _mm256_loadu_ps(a.xsc + i * ld_xsc + ld_xsc - 8));
      acc[i][r] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(Kernel::Dot256(u, xv)), acc[i][r]);
      if constexpr (kQ == QuantType::kQ4_1) {
        mins[i][r] = _mm_fmadd_ps(ws, _mm_loadu_ps(a.ds + i * ld_ds + 2 * b), mins[i][r]);
      }
    }
  }
}

// y = HSum(A_lo + A_hi) (+ M[1] + M[3] for Q4_1) (+ bias) for the MR × NR outputs.
template <class Kernel, QuantType kQ, int MR, int NR>
[[gnu::always_inline]] inline void Finish(const MicroArgs& a, const __m256 (&lo)[MR][NR],
                                          const __m256 (&hi)[MR][NR],
                                          const __m128 (&mins)[MR][NR]) {
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < NR; ++r) {
      float s = simd::HSum(_mm256_add_ps(lo[i][r], hi[i][r]));
      if constexpr (kQ == QuantType::kQ4_1) {
        alignas(16) float m[4];
        _mm_store_ps(m, mins[i][r]);
        s = s + (m[1] + m[3]);
      }
      a.y[i * a.ldy + r] = a.bias != nullptr ? s + a.bias[r] : s;
    }
  }
}

// Kernel::Micro<kQ, MR, nr> for a run-time nr in [NR, Kernel::Nr(MR)).
template <class Kernel, QuantType kQ, int MR, int NR = 1>
void MicroTail(int nr, const MicroArgs& a) {
  if constexpr (NR < Kernel::Nr(MR)) {
    if (nr == NR) return Kernel::template Micro<kQ, MR, NR>(a);
    MicroTail<Kernel, kQ, MR, NR + 1>(nr, a);
  }
}

// MR x rows against `rows` weight rows.
template <class Kernel, QuantType kQ, int MR>
void RowBlock(MicroArgs a, int64_t rows) {
  constexpr int kNr = Kernel::Nr(MR);
  const uint8_t* w = a.w;
  const float* bias = a.bias;
  float* y = a.y;
  for (int64_t r = 0; r < rows; r += kNr) {
    a.w = w + r * a.row_bytes;
    a.bias = bias != nullptr ? bias + r : nullptr;
    a.y = y + r;
    if (r + kNr <= rows) {
      Kernel::template Micro<kQ, MR, kNr>(a);
    } else {
      MicroTail<Kernel, kQ, MR>(static_cast<int>(rows - r), a);
    }
  }
}

// RowBlock for a run-time mr in [MR, Kernel::kMaxMr].
template <class Kernel, QuantType kQ, int MR = 1>
void RowBlockOf(int mr, const MicroArgs& a, int64_t rows) {
  if constexpr (MR < Kernel::kMaxMr) {
    if (mr != MR) return RowBlockOf<Kernel, kQ, MR + 1>(mr, a, rows);
  }
  RowBlock<Kernel, kQ, MR>(a, rows);
}

template <class Kernel, QuantType kQ>
void Rows(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  const WeightMatrix& w = *a.w;
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t row_bytes = k / 32 * QuantBlockBytes(kQ);
  const int64_t ld_xsc = Int8XscStride(k);
  const int64_t ld_ds = Int8DsStride(k);
  constexpr int64_t kMaxMr = Kernel::kMaxMr;
  const int64_t x_row_bytes = k + 4 * (ld_xsc + ld_ds);
  const int64_t x_tile = std::max<int64_t>(kMaxMr, kXTileBytes / x_row_bytes / kMaxMr * kMaxMr);
  const auto* wd = static_cast<const uint8_t*>(w.data);
  float bias_panel[kPanelRows];
  for (int64_t i0 = 0; i0 < a.m; i0 += x_tile) {
    const int64_t mt = std::min(x_tile, a.m - i0);
    for (int64_t j0 = n0; j0 < n1; j0 += kPanelRows) {
      const int64_t rows = std::min(kPanelRows, n1 - j0);
      const float* bias = nullptr;
      if (a.bias != nullptr) {
        for (int64_t r = 0; r < rows; ++r) {
          bias_panel[r] = WeightAt(a.bias->data, a.bias->dtype, j0 + r);
        }
        bias = bias_panel;
      }
      for (int64_t i = 0; i < mt; i += kMaxMr) {
        const int64_t row = i0 + i;
        const MicroArgs args{a.q + row * k,
                             a.xsc + row * ld_xsc,
                             a.ds + row * ld_ds,
                             k,
                             wd + j0 * row_bytes,
                             row_bytes,
                             /*prefetch=*/i0 == 0 && i == 0,
                             bias,
                             a.y + row * n + j0,
                             n};
        RowBlockOf<Kernel, kQ>(static_cast<int>(std::min<int64_t>(kMaxMr, mt - i)), args, rows);
      }
    }
  }
}

template <class Kernel>
void RowsOfAnyFormat(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  switch (a.w->quant) {
    case QuantType::kQ8_0:
      return Rows<Kernel, QuantType::kQ8_0>(a, n0, n1);
    case QuantType::kQ4_0:
      return Rows<Kernel, QuantType::kQ4_0>(a, n0, n1);
    case QuantType::kQ4_1:
      return Rows<Kernel, QuantType::kQ4_1>(a, n0, n1);
    case QuantType::kNone:
      break;
  }
}

}  // namespace int8dot
}  // namespace spanserve::kernels::cpu::internal
