// MatMul: y = x·Wᵀ with register-blocked AVX2 micro-kernels (batches of more than 4 rows go
// to matmul_avx512.cc where the CPU has AVX-512, with the same results). Weights are f32,
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

// Largest block of x rows one micro-kernel handles.
constexpr int kMaxMr = 4;
// Weight rows per panel: divisible by every NR below, small enough that a widened panel
// (kPanelRows · k floats) stays in L2.
constexpr int64_t kPanelRows = 24;
// Bytes of x one tile may hold, so the tile stays in L2 while panels stream past it.
constexpr int64_t kXTileBytes = 256 << 10;

// Weight rows per micro-kernel for MR x rows, within 16 ymm registers
// (MR·NR accumulators + NR weights + 1 x): m = 1 gets 8 independent FMA chains.
template <int MR>
constexpr int kNr = MR == 1 ? 8 : (MR == 4 ? 3 : 4);
// Quantized rows need registers for each row's scale and min while a block is decoded.
template <int MR, bool kQuant>
constexpr int kNrFor = kQuant ? (MR == 1 ? 4 : 2) : kNr<MR>;

using internal::IsQuant;
using internal::QuantOf;
using internal::RowAt;
using internal::WFmt;

// A Q5 block's 32 quants (nibble | fifth bit << 4) as bytes, elements 0..15 in the low lane:
// the nibbles of qs[16] (low, then high) and 16 where bit p of qh is set.
inline __m256i Q5Quants(const uint8_t* qs, uint32_t qh) {
  const __m256i q =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  const __m256i nibbles = _mm256_and_si256(_mm256_blend_epi32(q, _mm256_srli_epi16(q, 4), 0xf0),
                                           _mm256_set1_epi8(0x0f));
  const __m256i spread =
      _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)),
                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                           2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i sel = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i fifth = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel),
                                         _mm256_set1_epi8(0x10));
  return _mm256_or_si256(nibbles, fifth);
}

// Bytes of `v` shifted right by `shift` bits (0..7), each byte on its own.
inline __m128i ShiftBytesRight(__m128i v, int shift) {
  return _mm_and_si128(_mm_srl_epi16(v, _mm_cvtsi32_si128(shift)),
                       _mm_set1_epi8(static_cast<char>(0xff >> shift)));
}

// The 32 weights of elements [p, p + 32) of one quantized row (p a multiple of 32) as four
// vectors of 8, each value computed exactly as dequant.cc computes it (kernels/quant.h: the
// products and sums in the reference's order, rounded one by one, no FMA).
template <WFmt kW>
inline void DecodeGroup(const void* row, int64_t p, __m256* wv) {
  constexpr QuantType kQ = QuantOf(kW);
  const uint8_t* b =
      static_cast<const uint8_t*>(row) + p / QuantBlockElems(kQ) * QuantBlockBytes(kQ);
  // Lanes 8c .. 8c + 7 of the 32 bytes lo (elements 0..15), hi (16..31).
  const auto chunk = [](__m128i lo, __m128i hi, int c) {
    return c == 0 ? lo : c == 1 ? _mm_srli_si128(lo, 8) : c == 2 ? hi : _mm_srli_si128(hi, 8);
  };
  const __m128i low4 = _mm_set1_epi8(0x0f);
  if constexpr (kW == WFmt::kQ8_0 || kW == WFmt::kQ4_0 || kW == WFmt::kQ5_0) {
    // d·q, q signed.
    const __m256 d = _mm256_set1_ps(simd::HalfAt(b));
    __m128i lo, hi;
    if constexpr (kW == WFmt::kQ8_0) {
      lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
      hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18));
    } else if constexpr (kW == WFmt::kQ4_0) {
      simd::Nibbles(b + 2, &lo, &hi);
      lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
      hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
    } else {
      uint32_t qh;
      std::memcpy(&qh, b + 2, 4);
      const __m256i q = _mm256_sub_epi8(Q5Quants(b + 6, qh), _mm256_set1_epi8(16));
      lo = _mm256_castsi256_si128(q);
      hi = _mm256_extracti128_si256(q, 1);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) wv[c] = _mm256_mul_ps(simd::I8x8ToF32(chunk(lo, hi, c)), d);
  } else if constexpr (kW == WFmt::kQ4_1 || kW == WFmt::kQ5_1) {
    // (d·q) + m, q unsigned.
    const __m256 d = _mm256_set1_ps(simd::HalfAt(b));
    const __m256 mn = _mm256_set1_ps(simd::HalfAt(b + 2));
    __m128i lo, hi;
    if constexpr (kW == WFmt::kQ4_1) {
      simd::Nibbles(b + 4, &lo, &hi);
    } else {
      uint32_t qh;
      std::memcpy(&qh, b + 4, 4);
      const __m256i q = Q5Quants(b + 8, qh);
      lo = _mm256_castsi256_si128(q);
      hi = _mm256_extracti128_si256(q, 1);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      wv[c] = _mm256_add_ps(_mm256_mul_ps(d, simd::U8x8ToF32(chunk(lo, hi, c))), mn);
    }
  } else if constexpr (kW == WFmt::kQ4_K || kW == WFmt::kQ5_K) {
    // Sub-block s of 32: (d·sc)·q − dmin·m, q unsigned.
    const int s = static_cast<int>(p % 256 / 32);
    int sc, m;
    simd::ScaleMinK4(b + 4, s, &sc, &m);
    const __m256 dl = _mm256_set1_ps(simd::HalfAt(b) * static_cast<float>(sc));
    const __m256 ml = _mm256_set1_ps(simd::HalfAt(b + 2) * static_cast<float>(m));
    const uint8_t* qs = b + (kW == WFmt::kQ4_K ? 16 : 48) + 32 * (s / 2);
    __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16));
    if (s % 2 != 0) {
      lo = _mm_srli_epi16(lo, 4);
      hi = _mm_srli_epi16(hi, 4);
    }
    lo = _mm_and_si128(lo, low4);
    hi = _mm_and_si128(hi, low4);
    if constexpr (kW == WFmt::kQ5_K) {
      const uint8_t* qh = b + 16;
      const __m128i bit = _mm_set1_epi8(static_cast<char>(1 << s));
      const __m128i five = _mm_set1_epi8(0x10);
      const __m128i h0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qh));
      const __m128i h1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qh + 16));
      lo = _mm_or_si128(lo, _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h0, bit), bit), five));
      hi = _mm_or_si128(hi, _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h1, bit), bit), five));
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      wv[c] = _mm256_sub_ps(_mm256_mul_ps(dl, simd::U8x8ToF32(chunk(lo, hi, c))), ml);
    }
  } else if constexpr (kW == WFmt::kIQ4_NL || kW == WFmt::kIQ4_XS) {
    // d·value (IQ4_NL), (d·(ls − 32))·value (IQ4_XS, sub-block g of 32): each 4-bit code
    // looked up in kIq4NlValues, elements 0..15 the low nibbles of 16 bytes, 16..31 the high.
    float d;
    const uint8_t* qs;
    if constexpr (kW == WFmt::kIQ4_NL) {
      d = simd::HalfAt(b);
      qs = b + 2;
    } else {
      const int g = static_cast<int>(p % 256 / 32);
      d = simd::HalfAt(b) * static_cast<float>(simd::ScaleIQ4XS(b, g) - 32);
      qs = b + 8 + 16 * g;
    }
    __m128i lo, hi;
    simd::Nibbles(qs, &lo, &hi);
    const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4NlValues));
    lo = _mm_shuffle_epi8(table, lo);
    hi = _mm_shuffle_epi8(table, hi);
    const __m256 dv = _mm256_set1_ps(d);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) wv[c] = _mm256_mul_ps(dv, simd::I8x8ToF32(chunk(lo, hi, c)));
  } else if constexpr (kW == WFmt::kQ2_K || kW == WFmt::kQ3_K) {
    // Group g (elements 32g .. 32g + 31 of the super-block) spans sub-blocks 2g and 2g + 1
    // of 16; its 2-bit quants are bits 2·(g % 4) of qs[32·(g / 4) + j]. Q2_K:
    // (d·sc)·q − dmin·m, q unsigned; Q3_K: (d·sc)·q, q = 2 bits − (bit g of hmask[j] ? 0 : 4).
    const int g = static_cast<int>(p % 256 / 32);
    const int shift = 2 * (g % 4);
    const uint8_t* qs = b + (kW == WFmt::kQ2_K ? 16 : 32) + 32 * (g / 4);
    const __m128i three = _mm_set1_epi8(3);
    __m128i q[2];
    float dl[2], ml[2] = {0.0f, 0.0f};
#pragma GCC unroll 2
    for (int t = 0; t < 2; ++t) {
      const int s = 2 * g + t;
      q[t] = _mm_and_si128(
          ShiftBytesRight(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16 * t)), shift),
          three);
      if constexpr (kW == WFmt::kQ2_K) {
        dl[t] = simd::HalfAt(b + 80) * static_cast<float>(b[s] & 0x0f);
        ml[t] = simd::HalfAt(b + 82) * static_cast<float>(b[s] >> 4);
      } else {
        const uint8_t* scales = b + 96;
        dl[t] = simd::HalfAt(b + 108) * static_cast<float>(simd::ScaleK3(scales, s));
        // Minus 4 where the high bit (bit g of hmask[j]) is clear.
        const __m128i bit = _mm_set1_epi8(static_cast<char>(1 << g));
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * t));
        q[t] = _mm_sub_epi8(
            q[t], _mm_andnot_si128(_mm_cmpeq_epi8(_mm_and_si128(h, bit), bit), _mm_set1_epi8(4)));
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m128i bytes = c % 2 == 0 ? q[c / 2] : _mm_srli_si128(q[c / 2], 8);
      const __m256 v = _mm256_mul_ps(_mm256_set1_ps(dl[c / 2]), simd::I8x8ToF32(bytes));
      wv[c] = kW == WFmt::kQ2_K ? _mm256_sub_ps(v, _mm256_set1_ps(ml[c / 2])) : v;
    }
  } else {
    static_assert(kW == WFmt::kQ6_K);
    // Group g (elements 32g .. 32g + 31 of the super-block) spans sub-blocks 2g and 2g + 1
    // of 16: (d·scales[s])·q, q = 6 bits − 32.
    const int g = static_cast<int>(p % 256 / 32);
    const int h = g / 4, r = g % 4;
    const uint8_t* ql = b + 64 * h + 32 * (r % 2);
    const uint8_t* qh = b + 128 + 32 * h;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = simd::HalfAt(b + 208);
    const __m256 dl0 = _mm256_set1_ps(d * static_cast<float>(scales[2 * g]));
    const __m256 dl1 = _mm256_set1_ps(d * static_cast<float>(scales[2 * g + 1]));
    const int lo_shift = 4 * (r / 2), hi_shift = 2 * r;
    const __m128i three = _mm_set1_epi8(3);
    const __m128i bias = _mm_set1_epi8(32);
    __m128i q[2];
#pragma GCC unroll 2
    for (int t = 0; t < 2; ++t) {
      const __m128i l = _mm_and_si128(
          ShiftBytesRight(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ql + 16 * t)), lo_shift),
          low4);
      const __m128i u = _mm_and_si128(
          ShiftBytesRight(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qh + 16 * t)), hi_shift),
          three);
      q[t] = _mm_sub_epi8(_mm_or_si128(l, _mm_slli_epi16(u, 4)), bias);
    }
    wv[0] = _mm256_mul_ps(dl0, simd::I8x8ToF32(q[0]));
    wv[1] = _mm256_mul_ps(dl0, simd::I8x8ToF32(_mm_srli_si128(q[0], 8)));
    wv[2] = _mm256_mul_ps(dl1, simd::I8x8ToF32(q[1]));
    wv[3] = _mm256_mul_ps(dl1, simd::I8x8ToF32(_mm_srli_si128(q[1], 8)));
  }
}

// y[i, r] = x[i, :] · w[r, :] (+ bias[r]) for i < MR, r < NR.
// x: [MR, k] stride ldx; w: [NR, k] stride ldw (elements); y: [MR, NR] stride ldy.
// prefetch: when set, the weight rows that follow these NR rows are prefetched at the rate
// these are consumed. Rows of a bf16 GEMV are short streams (k·2 bytes) that the hardware
// prefetcher ramps up on too late; this keeps DRAM busy across micro-kernel boundaries.
template <int MR, int NR, WFmt kW>
inline void Micro(const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t k, bool prefetch,
                  const float* bias, float* y, int64_t ldy) {
  // Bytes of the NR rows per 8 elements of k (rounded up for quantized rows).
  constexpr int64_t kStepBytes =
      IsQuant(kW) ? (NR * QuantBlockBytes(QuantOf(kW)) * 8 + QuantBlockElems(QuantOf(kW)) - 1) /
                        QuantBlockElems(QuantOf(kW))
                  : NR * 8 * static_cast<int64_t>(DTypeSize(internal::FloatType(kW)));
  const char* next = static_cast<const char*>(RowAt<kW>(w, NR, ldw));
  const void* rows[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) rows[r] = RowAt<kW>(w, r, ldw);
  __m256 acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[i][r] = _mm256_setzero_ps();
  }
  const int64_t k8 = k & ~int64_t{7};
  if constexpr (IsQuant(kW)) {
    // 32 elements at a time, row by row: a row's scales (and min) are decoded once per 32
    // elements, then its four chunks of 8 go in order into the row's accumulators (the same
    // order as the float path: each accumulator still sees k ascending).
    for (int64_t p = 0; p < k8; p += 32) {
      if (prefetch) {
        // Into L1: measured faster than L2 for quantized rows (Q8_0 49152 × 576 GEMV 0.9-1.2
        // vs 1.7 ms), whose few bytes per step leave L1 room; float rows go to L2 (below).
#pragma GCC unroll 4
        for (int64_t b = 0; b < 4 * kStepBytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
        next += 4 * kStepBytes;
      }
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        __m256 wv[4];
        DecodeGroup<kW>(rows[r], p, wv);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
#pragma GCC unroll 8
          for (int i = 0; i < MR; ++i) {
            acc[i][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * ldx + p + 8 * c), wv[c], acc[i][r]);
          }
        }
      }
    }
  } else {
    for (int64_t p = 0; p < k8; p += 8) {
      if (prefetch) {
#pragma GCC unroll 4
        // Into L2: into L1 the next rows evicted the x rows and the rows in use (all
        // matmuls of a Qwen2-0.5B-shaped step at m = 1: 45-53 ms with L1, 30-33 ms with L2).
        for (int64_t b = 0; b < kStepBytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
        next += kStepBytes;
      }
      __m256 wv[NR];
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) wv[r] = simd::Load8<internal::FloatType(kW)>(rows[r], p);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + i * ldx + p);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < NR; ++r) {
      float s = simd::HSum(acc[i][r]);
      if constexpr (!IsQuant(kW)) {  // quantized rows are whole blocks: no k-tail
        for (int64_t p = k8; p < k; ++p) {
          s = std::fma(x[i * ldx + p], simd::Load1<internal::FloatType(kW)>(rows[r], p), s);
        }
      }
      y[i * ldy + r] = bias != nullptr ? s + bias[r] : s;
    }
  }
}

// Micro<MR, nr> for a run-time nr in [NR, kNrFor<MR, ...>).
template <int MR, WFmt kW, int NR = 1>
void MicroTail(int nr, const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t k,
               bool prefetch, const float* bias, float* y, int64_t ldy) {
  if constexpr (NR < kNrFor<MR, IsQuant(kW)>) {
    if (nr == NR) return Micro<MR, NR, kW>(x, ldx, w, ldw, k, prefetch, bias, y, ldy);
    MicroTail<MR, kW, NR + 1>(nr, x, ldx, w, ldw, k, prefetch, bias, y, ldy);
  }
}

// MR rows of x against `rows` weight rows.
template <int MR, WFmt kW>
void RowBlock(const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t rows, int64_t k,
              bool prefetch, const float* bias, float* y, int64_t ldy) {
  constexpr int kNR = kNrFor<MR, IsQuant(kW)>;
  int64_t r = 0;
  for (; r + kNR <= rows; r += kNR) {
    Micro<MR, kNR, kW>(x, ldx, RowAt<kW>(w, r, ldw), ldw, k, prefetch, bias ? bias + r : nullptr,
                       y + r, ldy);
  }
  if (r < rows) {
    MicroTail<MR, kW>(static_cast<int>(rows - r), x, ldx, RowAt<kW>(w, r, ldw), ldw, k, prefetch,
                      bias ? bias + r : nullptr, y + r, ldy);
  }
}

// `mt` rows of x against one panel of `rows` weight rows.
// x: [mt, k] stride k; w: [rows, k] stride ldw; y: [mt, rows] stride ldy.
// prefetch: w is read from memory (not a widened copy), so the first row block prefetches.
template <WFmt kW>
void Panel(const float* x, int64_t mt, const void* w, int64_t ldw, int64_t rows, int64_t k,
           bool prefetch, const float* bias, float* y, int64_t ldy) {
  for (int64_t i = 0; i < mt; i += kMaxMr) {
    const float* xi = x + i * k;
    float* yi = y + i * ldy;
    const bool pf = prefetch && i == 0;
    switch (std::min<int64_t>(kMaxMr, mt - i)) {
      case 1:
        RowBlock<1, kW>(xi, k, w, ldw, rows, k, pf, bias, yi, ldy);
        break;
      case 2:
        RowBlock<2, kW>(xi, k, w, ldw, rows, k, pf, bias, yi, ldy);
        break;
      case 3:
        RowBlock<3, kW>(xi, k, w, ldw, rows, k, pf, bias, yi, ldy);
        break;
      default:
        RowBlock<4, kW>(xi, k, w, ldw, rows, k, pf, bias, yi, ldy);
        break;
    }
  }
}

// Per-thread scratch for a widened panel; grows to the largest k seen, then never again.
float* PanelBuffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// The AVX2 path for the output features [n0, n1) (one OpenMP thread's range).
template <WFmt kW>
void MatMulRowsAvx2(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                    float* y, int64_t n0, int64_t n1, int64_t x_tile, bool widen) {
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  float* panel = (widen && n0 < n1) ? PanelBuffer(kPanelRows * k) : nullptr;
  float bias_panel[kPanelRows];

  for (int64_t i0 = 0; i0 < m; i0 += x_tile) {
    const int64_t mt = std::min(x_tile, m - i0);
    for (int64_t j0 = n0; j0 < n1; j0 += kPanelRows) {
      const int64_t rows = std::min(kPanelRows, n1 - j0);
      const float* b = nullptr;
      if (bias != nullptr) {
        for (int64_t r = 0; r < rows; ++r) {
          bias_panel[r] = WeightAt(bias->data, bias->dtype, j0 + r);
        }
        b = bias_panel;
      }
      const void* wj = RowAt<kW>(w.data, j0, k);
      float* yj = y + i0 * n + j0;
      if (widen) {
        internal::RowToF32<kW>(wj, 0, rows * k, panel);
        Panel<WFmt::kF32>(x + i0 * k, mt, panel, k, rows, k, false, b, yj, n);
      } else {
        Panel<kW>(x + i0 * k, mt, wj, k, rows, k, i0 == 0, b, yj, n);
      }
    }
  }
}

Isa BestIsa() {
  if (!internal::CpuHasAvx512()) return Isa::kAvx2;
  const char* cap = std::getenv("SPANSERVE_MAX_ISA");
  return cap != nullptr && std::strcmp(cap, "avx2") == 0 ? Isa::kAvx2 : Isa::kAvx512;
}

std::atomic<Isa>& MaxIsa() {
  static std::atomic<Isa> isa{BestIsa()};
  return isa;
}

template <WFmt kW>
void MatMulTyped(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                 float* y) {
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t x_tile =
      std::max<int64_t>(kMaxMr, kXTileBytes / (std::max<int64_t>(k, 1) * 4) / kMaxMr * kMaxMr);
  // Widening a panel once pays off when more than one row block reuses it.
  const bool widen = kW != WFmt::kF32 && m > kMaxMr;
  const bool avx512 = m > kMaxMr && MaxIsa().load(std::memory_order_relaxed) == Isa::kAvx512;

  // Static split of n into one contiguous, 8-aligned range per thread: each thread streams
  // its own weight rows once per x tile.
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t per_thread = ((n + threads - 1) / threads + 7) & ~int64_t{7};
    const int64_t n0 = std::min(n, t * per_thread);
    const int64_t n1 = std::min(n, n0 + per_thread);
    if (avx512) {
      internal::MatMulRowsAvx512(x, m, w, bias, y, n0, n1);
    } else {
      MatMulRowsAvx2<kW>(x, m, w, bias, y, n0, n1, x_tile, widen);
    }
  });
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
  SPANSERVE_CHECK(x != y);
  if (bias != nullptr) SPANSERVE_CHECK_EQ(bias->size, w.rows);
  if (m <= 0 || w.rows <= 0) return;
  if (w.quant != QuantType::kNone) SPANSERVE_CHECK_EQ(w.cols % QuantBlockElems(w.quant), 0);
  if (w.precision == MatMulPrecision::kBf16Dot) {
    SPANSERVE_CHECK(internal::CpuHasAvx512Bf16());
    internal::MatMulBf16Dot(x, m, w, bias, y);
    return;
  }
  // (IQ4_NL / Q3_K take the integer path once UploadMatrix has packed or re-encoded them:
  // Int8DotFormat.)
  if (w.precision == MatMulPrecision::kInt8Dot && Int8DotSupports(w.quant)) {
    if (w.packed != nullptr) return internal::MatMulInt8Packed(x, m, w, bias, y);
    if (Int8DotFormat(w.quant) == w.quant) {
      internal::MatMulInt8Dot(x, m, w, bias, y, Int8DotUsesVnni());
      return;
    }
  }
  internal::WithFormat(internal::FormatOf(w),
                       [&](auto f) { MatMulTyped<decltype(f)::value>(x, m, w, bias, y); });
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
