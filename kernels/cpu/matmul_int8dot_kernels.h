// The int8 dot-product kernels' shared parts (matmul_int8dot.h), internal to kernels/cpu: the
// loop over panels and row blocks, and the micro-kernels' common steps, templated on the
// micro-kernels of one instruction set. matmul_int8dot.cc instantiates them with the AVX2
// micro-kernels and matmul_int8dot_vnni.cc, compiled with AVX512_VNNI, with the VNNI ones.
// Every template here takes the kernel type, which lives in its file's anonymous namespace, so
// the two files' instantiations are distinct functions and the linker never swaps one for the
// other.
//
// Loop nest, per thread over its own output features [n0, n1):
//   for each x tile (<= kXTileBytes of quantized rows)
//     for each panel of <= kPanelRows weight rows (read from memory once per tile, then L1)
//       for each block of <= Kernel::kMaxMr x rows: micro-kernel MR × Kernel::Nr(MR), full k
// A micro-kernel walks k a quad of blocks at a time; per weight row it unpacks the quad once
// (nibbles, scales) and reuses it for its MR x rows.
#pragma once

#include "kernels/cpu/matmul_avx512.h"  // first: it includes <immintrin.h> (see there)

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/matmul_int8dot.h"
#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu::internal {

// One call's operands, as every thread sees them.
struct Int8DotArgs {
  const uint8_t* x;  // [m, Int8RowBytes(k)] quantized activations
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
  const uint8_t* x;  // MR rows of quad records, stride ldx bytes
  int64_t ldx;
  int64_t k;
  const uint8_t* w;  // NR rows of k / 32 blocks, stride row_bytes
  int64_t row_bytes;
  bool prefetch;      // prefetch the rows after these NR (they come from memory)
  const float* bias;  // [NR] or null
  float* y;           // [MR, NR], stride ldy
  int64_t ldy;
};

// x row i's record for quad `quad`, and its parts.
template <class Kernel>
[[gnu::always_inline]] inline const uint8_t* Record(const MicroArgs& a, int i, int64_t quad) {
  return a.x + i * a.ldx + quad * kInt8QuadBytes;
}
template <class Kernel>
[[gnu::always_inline]] inline const int32_t* RecordBase(const uint8_t* record) {
  return reinterpret_cast<const int32_t*>(record + kInt8QuadBase);
}
template <class Kernel>
[[gnu::always_inline]] inline const float* RecordDc(const uint8_t* record) {
  return reinterpret_cast<const float*>(record + kInt8QuadDc);
}
template <class Kernel>
[[gnu::always_inline]] inline const float* RecordDs(const uint8_t* record) {
  return reinterpret_cast<const float*>(record + kInt8QuadDs);
}

// Q4_K and Q5_K: super-blocks of eight sub-blocks of 32, each with a scale and a min.
constexpr bool IsK(QuantType q) { return q == QuantType::kQ4_K || q == QuantType::kQ5_K; }

// Whether a format's blocks carry a min (w = d·q + m; Q4_K / Q5_K: their sub-blocks,
// m = −dmin·m): its products add m_w·s_x.
constexpr bool HasMin(QuantType q) {
  return q == QuantType::kQ4_1 || q == QuantType::kQ5_1 || IsK(q);
}

// Bytes of a row's weights per quad of 32-element blocks (K-quants: half a super-block).
constexpr int64_t QuadBytes(QuantType q) { return QuantBlockBytes(q) * 128 / QuantBlockElems(q); }

// The first byte of quad `quad` of a weight row: a quad of blocks, or (Q4_K / Q5_K / Q6_K)
// the super-block holding the quad's four blocks of 32.
template <QuantType kQ>
[[gnu::always_inline]] inline const uint8_t* QuadAt(const uint8_t* row, int64_t quad) {
  if constexpr (QuantBlockElems(kQ) == 256) {
    return row + quad / 2 * QuantBlockBytes(kQ);
  } else {
    return row + quad * QuadBytes(kQ);
  }
}

// Q4_K / Q5_K: the scales of sub-blocks 4h .. 4h + 3 of the super-block at `sb` for h = 0
// (half0) and h = 1 (half1), as QuadScales gives a quad's: [d·sc_0, −(dmin·m_0), d·sc_1,
// −(dmin·m_1), ...], each product rounded to f32 (the dequantization's (d·sc) and (dmin·m)).
// sc, m: ggml's get_scale_min_k4.
[[gnu::always_inline]] inline void Q4KSuperScales(const uint8_t* sb, __m256* half0, __m256* half1) {
  uint16_t h[2];
  std::memcpy(h, sb, 4);
  // The 12 scale bytes as ggml unpacks them: bytes 0-7 of u = sc_0..sc_7, bytes 8-15 =
  // m_0..m_7 (get_scale_min_k4 for every sub-block at once).
  uint32_t u[4];
  std::memcpy(u, sb + 4, 12);
  constexpr uint32_t kLow6 = 0x3f3f3f3f, kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  u[3] = ((u[2] >> 4) & kLow4) | (((u[1] >> 6) & kLow2) << 4);
  const uint32_t m_low = u[1] & kLow6;
  u[1] = (u[2] & kLow4) | (((u[0] >> 6) & kLow2) << 4);
  u[2] = m_low;
  u[0] &= kLow6;
  // sc_0..7 and m_0..7 widened to f32 (exact), times d and dmin.
  const __m128i scales = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
  const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scales));
  const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scales, 8)));
  const __m256 ds = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h[0])), sc);
  const __m256 dm =
      _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h[1])), m), _mm256_set1_ps(-0.0f));
  // Per 128-bit lane: lo = [ds_0, dm_0, ds_1, dm_1 | ds_4, dm_4, ds_5, dm_5], hi = [.._2, .._3 |
  // .._6, .._7].
  const __m256 lo = _mm256_unpacklo_ps(ds, dm);
  const __m256 hi = _mm256_unpackhi_ps(ds, dm);
  *half0 = _mm256_permute2f128_ps(lo, hi, 0x20);
  *half1 = _mm256_permute2f128_ps(lo, hi, 0x31);
}

// Q4KSuperScales' half quad % 2 for quad `quad`.
template <class Kernel>
[[gnu::always_inline]] inline __m256 Q4KQuadScales(const uint8_t* sb, int64_t quad) {
  __m256 half0, half1;
  Q4KSuperScales(sb, &half0, &half1);
  return quad % 2 == 0 ? half0 : half1;
}

// Q4_K / Q5_K: the 32 quant bytes of sub-blocks 4h + 2c and 4h + 2c + 1 (c = 0, 1; the low
// and the high nibbles of the same bytes).
template <QuantType kQ>
[[gnu::always_inline]] inline const uint8_t* Q4KQuants(const uint8_t* sb, int64_t quad, int c) {
  return sb + (kQ == QuantType::kQ5_K ? 48 : 16) + 64 * (quad % 2) + 32 * c;
}

// Q5_K: bit s of qh[j] (32 bytes at 16) is element j's fifth bit in sub-block s.
[[gnu::always_inline]] inline const uint8_t* Q5KHighBits(const uint8_t* sb) { return sb + 16; }

// Q6_K: the scales of sub-blocks 8h .. 8h + 7 (h = quad % 2; sub-block 8h + 2β + η is half η
// of the quad's block β) of the super-block at `sb`, d·sc each rounded to f32 as the
// dequantization rounds it: [d·sc_8h, ..., d·sc_8h+7].
template <class Kernel>
[[gnu::always_inline]] inline __m256 Q6KQuadScales(const uint8_t* sb, int64_t quad) {
  uint16_t h;
  std::memcpy(&h, sb + 208, 2);
  const __m128i sc = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 192 + 8 * (quad % 2)));
  return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
}

// Q6_K: the quad's 64 ql bytes (block β's low 4 bits of element p: byte 32(β % 2) + p, its
// low nibble for β < 2, high for β >= 2) and 32 qh bytes (its high 2 bits: byte p, bits 2β,
// 2β + 1), as kernels/cpu/dequant.cc decodes them.
[[gnu::always_inline]] inline const uint8_t* Q6KLow(const uint8_t* sb, int64_t quad) {
  return sb + 64 * (quad % 2);
}
[[gnu::always_inline]] inline const uint8_t* Q6KHigh(const uint8_t* sb, int64_t quad) {
  return sb + 128 + 32 * (quad % 2);
}

// Byte offsets in a block of a format's quants and (Q5_0 / Q5_1) fifth bits.
constexpr int QsOffset(QuantType q) {
  return q == QuantType::kQ8_0 || q == QuantType::kQ4_0 ? 2
         : q == QuantType::kQ4_1                        ? 4
         : q == QuantType::kQ5_0                        ? 6
                                                        : 8;
}
constexpr int QhOffset(QuantType q) { return q == QuantType::kQ5_0 ? 2 : 4; }

// The fifth bits (u32 qh) of block t of a quad, or 0 past `count` blocks.
template <class Kernel, QuantType kQ, bool kFull>
[[gnu::always_inline]] inline uint32_t FifthBitsOf(const uint8_t* block, int t, int count) {
  uint32_t qh = 0;
  if (kFull || t < count) std::memcpy(&qh, block + t * QuantBlockBytes(kQ) + QhOffset(kQ), 4);
  return qh;
}

// The 16 bytes at block t + offset of a quad starting at `block`, or zeros when the quad has
// only `count` blocks and t is past them (kFull: it has all four).
template <class Kernel, QuantType kQ, bool kFull>
[[gnu::always_inline]] inline __m128i Load16(const uint8_t* block, int t, int offset, int count) {
  if (!kFull && t >= count) return _mm_setzero_si128();
  return _mm_loadu_si128(
      reinterpret_cast<const __m128i*>(block + t * QuantBlockBytes(kQ) + offset));
}

// The f16 pairs at the start of a quad's blocks (d and m for Q4_1 / Q5_1; d and two bytes
// of quants otherwise), widened: [d_0, m_0, d_1, m_1, d_2, m_2, d_3, m_3], zeros past `count`
// blocks.
template <class Kernel, QuantType kQ, bool kFull>
[[gnu::always_inline]] inline __m256 QuadScales(const uint8_t* block, int count) {
  int32_t v[4] = {0, 0, 0, 0};
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t) {
    if (kFull || t < count) std::memcpy(&v[t], block + t * QuantBlockBytes(kQ), 4);
  }
  return _mm256_cvtph_ps(_mm_setr_epi32(v[0], v[1], v[2], v[3]));
}

// y = HSum(A_lo + A_hi) (+ (M[1] + M[3]) + (M[5] + M[7]) for Q4_1 / Q5_1) (+ bias) for the
// MR × NR outputs; eight horizontal sums at a time (simd::HSum8: HSum's bits).
template <class Kernel, QuantType kQ, int MR, int NR>
[[gnu::always_inline]] inline void Finish(const MicroArgs& a, const __m256 (&lo)[MR][NR],
                                          const __m256 (&hi)[MR][NR],
                                          const __m256 (&mins)[MR][NR]) {
  constexpr int kOutputs = MR * NR;
  alignas(32) float sums[(kOutputs + 7) / 8 * 8];
#pragma GCC unroll 2
  for (int g = 0; g < kOutputs; g += 8) {
    __m256 v[8];
#pragma GCC unroll 8
    for (int o = 0; o < 8; ++o) {
      const int i = (g + o) / NR, r = (g + o) % NR;
      v[o] = g + o < kOutputs ? _mm256_add_ps(lo[i][r], hi[i][r]) : _mm256_setzero_ps();
    }
    _mm256_store_ps(sums + g, simd::HSum8(v));
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      float s = sums[i * NR + r];
      if constexpr (HasMin(kQ)) {
        alignas(32) float m[8];
        _mm256_store_ps(m, mins[i][r]);
        s = s + ((m[1] + m[3]) + (m[5] + m[7]));
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
  const int64_t row_bytes = k / QuantBlockElems(kQ) * QuantBlockBytes(kQ);
  const int64_t ldx = Int8RowBytes(k);
  constexpr int64_t kMaxMr = Kernel::kMaxMr;
  const int64_t x_tile = std::max<int64_t>(kMaxMr, kXTileBytes / ldx / kMaxMr * kMaxMr);
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
        const MicroArgs args{a.x + row * ldx,
                             ldx,
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
    case QuantType::kQ5_0:
      return Rows<Kernel, QuantType::kQ5_0>(a, n0, n1);
    case QuantType::kQ5_1:
      return Rows<Kernel, QuantType::kQ5_1>(a, n0, n1);
    case QuantType::kQ4_K:
      return Rows<Kernel, QuantType::kQ4_K>(a, n0, n1);
    case QuantType::kQ5_K:
      return Rows<Kernel, QuantType::kQ5_K>(a, n0, n1);
    case QuantType::kQ6_K:
      return Rows<Kernel, QuantType::kQ6_K>(a, n0, n1);
    default:  // not Int8DotSupports: MatMul multiplies those exactly
      break;
  }
}

}  // namespace int8dot
}  // namespace spanserve::kernels::cpu::internal
