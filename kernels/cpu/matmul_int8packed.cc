// The integer dot products on repacked Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / K-quant / IQ4_NL weights
// (matmul_int8dot.h, "Packed weights"). Compiled with AVX512_VNNI and entered only where the CPU
// has it.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/matmul_int8dot.h"
#include "kernels/cpu/simd.h"
#include "kernels/quant.h"

// GCC 12 reports the pass-through operand of its own _mm512_cvtph_ps (never read with an
// all-ones mask) as maybe uninitialized once Group is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace spanserve::kernels::cpu::internal {
namespace {

// x quantized (QuantizeRowsPlain): int8 rows (stride k), and per block (stride k / 32) d, Σq
// and d·Σq; for Q6_K also the Σq of each block's first 16 elements.
struct QuantizedX {
  const int8_t* q;
  const float* d;
  const int32_t* sums;
  const float* d_sums;
  const int32_t* first_half_sums;
  QuantizedX Rows(int64_t i, int64_t k) const {
    const int64_t at = i * (k / 32);
    return {q + i * k, d + at, sums + at, d_sums + at,
            first_half_sums != nullptr ? first_half_sums + at : nullptr};
  }
};

// acc + the products of u's bytes with the four bytes at p in each lane (VPDPBUSD), p's
// dword broadcast by the instruction itself: the intrinsic with _mm512_set1_epi32 makes GCC
// 12 emit a separate VPBROADCASTD per product.
inline __m512i DotBroadcast(__m512i acc, __m512i u, const int32_t* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*p));
  return acc;
}

// Up to MR x rows against one group's records: out[i] lane r = y[i, 16g + r] before the bias.
// prefetch: when not null, record b of the records there is prefetched into L2 with record b.
template <QuantType kQ, int MR>
void Group(const uint8_t* records, int64_t blocks, const QuantizedX& x, int64_t k,
           const uint8_t* prefetch, __m512* out) {
  constexpr bool kMins = Int8PackedHasMins(kQ);
  constexpr bool kHalves = kQ == QuantType::kQ6_K;
  // The offset the weights' unsigned quants carry: w_q = u − kOffset.
  constexpr int kOffset = kQ == QuantType::kQ8_0 || kQ == QuantType::kIQ4_NL ? 128
                          : kQ == QuantType::kQ4_0                           ? 8
                          : kQ == QuantType::kQ5_0                           ? 16
                          : kQ == QuantType::kQ6_K                           ? 32
                                                                             : 0;
  constexpr int64_t kSecond = Int8PackedScaleBytes(kQ);  // m_w or Q6_K's d_w,1
  __m512 acc[MR], mins[MR];
  for (int i = 0; i < MR; ++i) {
    acc[i] = _mm512_setzero_ps();
    mins[i] = _mm512_setzero_ps();
  }
  const __m512i mask = _mm512_set1_epi8(0x0f);
  const auto scales = [](const uint8_t* p) {
    if constexpr (Int8PackedHasF32Scales(kQ)) return _mm512_loadu_ps(p);
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  };
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* rec = records + b * Int8PackedRecordBytes(kQ);
    if (prefetch != nullptr) {
      const uint8_t* next = prefetch + b * Int8PackedRecordBytes(kQ);
      for (int64_t l = 0; l < Int8PackedRecordBytes(kQ); l += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(next + l), _MM_HINT_T1);
      }
    }
    // u[j]: elements 4j .. 4j + 3 of the 16 rows, unsigned.
    __m512i u[8];
    if constexpr (kQ == QuantType::kQ8_0) {
      for (int j = 0; j < 8; ++j) u[j] = _mm512_loadu_si512(rec + 32 + 64 * j);
    } else {
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(rec + Int8PackedQuantsAt(kQ) + 64 * j);
        u[j] = _mm512_and_si512(v, mask);
        u[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
      }
      if constexpr (kQ == QuantType::kIQ4_NL) {
        // Each code's value + 128 (kIq4NlValues), looked up in every 128-bit lane.
        alignas(16) static constexpr uint8_t kUnsigned[16] = {
            1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};
        const __m512i table =
            _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kUnsigned)));
        for (int j = 0; j < 8; ++j) u[j] = _mm512_shuffle_epi8(table, u[j]);
      }
      // + 16 (+ 32) where the fifth (sixth) bit is set.
      for (int plane = 0; plane < Int8PackedHighBitPlanes(kQ); ++plane) {
        const __m512i bit = _mm512_set1_epi8(static_cast<char>(16 << plane));
        for (int j = 0; j < 8; ++j) {
          uint64_t bits;
          std::memcpy(&bits, rec + Int8PackedHighBitsAt(kQ) + 64 * plane + 8 * j, 8);
          u[j] = _mm512_mask_add_epi8(u[j], _cvtu64_mask64(bits), u[j], bit);
        }
      }
    }
    const __m512 dw = scales(rec);
    __m512 second = _mm512_setzero_ps();
    if constexpr (kMins || kHalves) second = scales(rec + kSecond);
    for (int i = 0; i < MR; ++i) {
      const int64_t at = i * blocks + b;
      const auto* xv = reinterpret_cast<const int32_t*>(x.q + i * k + 32 * b);
      const __m512 dx = _mm512_set1_ps(x.d[at]);
      if constexpr (kHalves) {
        // The offset taken back per half: D_h = Σ q·w exactly over the half's 16 elements.
        const int32_t s0 = x.first_half_sums[at];
        __m512i d0 = _mm512_set1_epi32(-kOffset * s0);
        __m512i d1 = _mm512_set1_epi32(-kOffset * (x.sums[at] - s0));
        for (int j = 0; j < 4; ++j) d0 = DotBroadcast(d0, u[j], xv + j);
        for (int j = 4; j < 8; ++j) d1 = DotBroadcast(d1, u[j], xv + j);
        acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(d0), acc[i]);
        acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(second, dx), _mm512_cvtepi32_ps(d1), acc[i]);
        continue;
      }
      // The offset the weights went in with, taken back: D = Σ q·w exactly.
      __m512i dot =
          kOffset != 0 ? _mm512_set1_epi32(-kOffset * x.sums[at]) : _mm512_setzero_si512();
      for (int j = 0; j < 8; ++j) dot = DotBroadcast(dot, u[j], xv + j);
      acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(dot), acc[i]);
      if constexpr (kMins) {
        mins[i] = _mm512_fmadd_ps(second, _mm512_set1_ps(x.d_sums[at]), mins[i]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) out[i] = kMins ? _mm512_add_ps(acc[i], mins[i]) : acc[i];
}

template <QuantType kQ>
void Groups(const WeightMatrix& w, const QuantizedX& xq, int64_t m, const WeightVector* bias,
            float* y, int64_t g0, int64_t g1) {
  const int64_t n = w.rows, k = w.cols, blocks = k / 32;
  const auto* packed = static_cast<const uint8_t*>(w.packed);
  constexpr int kMr = 4;
  const int64_t group_bytes = blocks * Int8PackedRecordBytes(kQ);
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = 16 * g;
    const int64_t rows = std::min<int64_t>(16, n - r0);
    const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
    alignas(64) float bias_panel[16] = {};
    if (bias != nullptr) {
      for (int64_t r = 0; r < rows; ++r) bias_panel[r] = WeightAt(bias->data, bias->dtype, r0 + r);
    }
    const __m512 bv = _mm512_load_ps(bias_panel);
    const uint8_t* records = packed + g * group_bytes;
    for (int64_t i0 = 0; i0 < m; i0 += kMr) {
      const int64_t mr = std::min<int64_t>(kMr, m - i0);
      __m512 out[kMr] = {};
      const QuantizedX x = xq.Rows(i0, k);
      // The first pass over this group's records (from memory) fetches the next group's into
      // L2, a record per record, while the later passes find this one's in cache.
      const uint8_t* pf = i0 == 0 && g + 1 < g1 ? records + group_bytes : nullptr;
      switch (mr) {
        case 1:
          Group<kQ, 1>(records, blocks, x, k, pf, out);
          break;
        case 2:
          Group<kQ, 2>(records, blocks, x, k, pf, out);
          break;
        case 3:
          Group<kQ, 3>(records, blocks, x, k, pf, out);
          break;
        default:
          Group<kQ, 4>(records, blocks, x, k, pf, out);
          break;
      }
      for (int64_t i = 0; i < mr; ++i) {
        const __m512 v = bias != nullptr ? _mm512_add_ps(out[i], bv) : out[i];
        _mm512_mask_storeu_ps(y + (i0 + i) * n + r0, lanes, v);
      }
    }
  }
}

// One row's block b of a packed format as the records keep it: u[p] the unsigned quant of
// element p (w_q + the format's offset); the scales d_w and m_w (Q6_K: d_w,0 and d_w,1), as
// the f16 bits stored (half) or, for the K-quants, the f32 products as kernels/cpu/dequant.cc
// rounds them (f32).
struct PackedRowBlock {
  uint8_t u[32];
  uint16_t half[2];
  float f32[2];
};

PackedRowBlock DecodeRowBlock(QuantType q, const uint8_t* row, int64_t b) {
  PackedRowBlock out{};
  if (Int8PackedHasF32Scales(q)) {
    const uint8_t* sb = row + b / 8 * QuantBlockBytes(q);
    const int s = static_cast<int>(b % 8);
    uint16_t h;
    if (q == QuantType::kQ6_K) {
      std::memcpy(&h, sb + 208, 2);
      const float d = F16ToF32(h);
      const auto* sc = reinterpret_cast<const int8_t*>(sb + 192);
      out.f32[0] = d * static_cast<float>(sc[2 * s]);
      out.f32[1] = d * static_cast<float>(sc[2 * s + 1]);
      for (int p = 0; p < 32; ++p) {
        const int e = 32 * s + p, half = e / 128, r = e % 128;
        const int low = (sb[64 * half + r % 64] >> (4 * (r / 64))) & 0x0f;
        const int high = (sb[128 + 32 * half + r % 32] >> (2 * (r / 32))) & 3;
        out.u[p] = static_cast<uint8_t>(low | high << 4);
      }
      return out;
    }
    std::memcpy(&h, sb, 2);
    const float d = F16ToF32(h);
    std::memcpy(&h, sb + 2, 2);
    const float dmin = F16ToF32(h);
    int sc, mn;
    simd::ScaleMinK4(sb + 4, s, &sc, &mn);
    out.f32[0] = d * static_cast<float>(sc);
    out.f32[1] = -(dmin * static_cast<float>(mn));
    const bool q5 = q == QuantType::kQ5_K;
    for (int p = 0; p < 32; ++p) {
      int v = (sb[(q5 ? 48 : 16) + 32 * (s / 2) + p] >> (4 * (s % 2))) & 0x0f;
      if (q5) v |= ((sb[16 + p] >> s) & 1) << 4;
      out.u[p] = static_cast<uint8_t>(v);
    }
    return out;
  }
  const uint8_t* block = row + b * QuantBlockBytes(q);
  std::memcpy(&out.half[0], block, 2);
  if (q == QuantType::kQ8_0) {
    for (int p = 0; p < 32; ++p) out.u[p] = static_cast<uint8_t>(block[2 + p] ^ 0x80);
    return out;
  }
  if (Int8PackedHasMins(q)) std::memcpy(&out.half[1], block + 2, 2);
  // Q4_0: d, qs; Q4_1: d, m, qs; Q5_0: d, qh, qs; Q5_1: d, m, qh, qs. Byte p of qs: element p
  // (low nibble) and p + 16 (high).
  const int64_t qh_at = Int8PackedHasMins(q) ? 4 : 2;
  const bool q5 = Int8PackedHighBitPlanes(q) == 1;
  const uint8_t* qs = block + qh_at + (q5 ? 4 : 0);
  uint32_t qh = 0;
  if (q5) std::memcpy(&qh, block + qh_at, 4);
  for (int p = 0; p < 16; ++p) {
    out.u[p] = static_cast<uint8_t>((qs[p] & 0x0f) | ((qh >> p) & 1) << 4);
    out.u[p + 16] = static_cast<uint8_t>((qs[p] >> 4) | ((qh >> (p + 16)) & 1) << 4);
  }
  return out;
}

// A buffer that grows to the largest call, then is reused.
struct Buffer {
  std::unique_ptr<uint8_t[]> data;
  int64_t size = 0;
  uint8_t* Reserve(int64_t bytes) {
    if (size < bytes) {
      data.reset(new uint8_t[bytes]);
      size = bytes;
    }
    return data.get();
  }
};

}  // namespace

int64_t Int8PackedBytes(QuantType q, int64_t n, int64_t k) {
  return (n + 15) / 16 * (k / 32) * Int8PackedRecordBytes(q);
}

void PackInt8(const WeightMatrix& w, uint8_t* out) {
  SPANSERVE_CHECK(Int8PackedSupports(w.quant));
  const QuantType q = w.quant;
  const int64_t n = w.rows, k = w.cols, blocks = k / 32;
  const int64_t row_bytes = k / QuantBlockElems(q) * QuantBlockBytes(q);
  const auto* src = static_cast<const uint8_t*>(w.data);
  const int64_t groups = (n + 15) / 16;
  const int64_t scale_bytes = Int8PackedScaleBytes(q);
  std::memset(out, 0, Int8PackedBytes(q, n, k));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* rec = out + (g * blocks + b) * Int8PackedRecordBytes(q);
      uint8_t* quants = rec + Int8PackedQuantsAt(q);
      for (int64_t r = 0; r < 16 && 16 * g + r < n; ++r) {
        const PackedRowBlock rb = DecodeRowBlock(q, src + (16 * g + r) * row_bytes, b);
        const int regions = Int8PackedHasMins(q) || q == QuantType::kQ6_K ? 2 : 1;
        for (int t = 0; t < regions; ++t) {
          if (Int8PackedHasF32Scales(q)) {
            std::memcpy(rec + t * scale_bytes + 4 * r, &rb.f32[t], 4);
          } else {
            std::memcpy(rec + t * scale_bytes + 2 * r, &rb.half[t], 2);
          }
        }
        for (int j = 0; j < 8; ++j) {
          for (int e = 0; e < 4; ++e) {
            const int p = 4 * j + e, bit = 4 * static_cast<int>(r) + e;
            if (q == QuantType::kQ8_0) {
              quants[64 * j + 4 * r + e] = rb.u[p];
            } else if (j < 4) {  // element p in the low nibble, p + 16 in the high one
              quants[64 * j + 4 * r + e] =
                  static_cast<uint8_t>((rb.u[p] & 0x0f) | (rb.u[p + 16] & 0x0f) << 4);
            }
            for (int plane = 0; plane < Int8PackedHighBitPlanes(q); ++plane) {
              uint8_t* masks = rec + Int8PackedHighBitsAt(q) + 64 * plane;
              masks[8 * j + bit / 8] |=
                  static_cast<uint8_t>(((rb.u[p] >> (4 + plane)) & 1) << (bit % 8));
            }
          }
        }
      }
    }
  }
}

namespace {

// Thread t's share of y = x·Wᵀ (+ bias): its contiguous range of the 16-row groups.
void GroupsPart(const WeightMatrix& w, const QuantizedX& xq, int64_t m, const WeightVector* bias,
                float* y, int64_t t, int64_t threads) {
  const int64_t groups = (w.rows + 15) / 16;
  const int64_t g0 = groups * t / threads, g1 = groups * (t + 1) / threads;
  if (g0 >= g1) return;
  switch (w.quant) {
    case QuantType::kQ8_0:
      return Groups<QuantType::kQ8_0>(w, xq, m, bias, y, g0, g1);
    case QuantType::kQ4_0:
      return Groups<QuantType::kQ4_0>(w, xq, m, bias, y, g0, g1);
    case QuantType::kQ4_1:
      return Groups<QuantType::kQ4_1>(w, xq, m, bias, y, g0, g1);
    case QuantType::kQ5_0:
      return Groups<QuantType::kQ5_0>(w, xq, m, bias, y, g0, g1);
    case QuantType::kQ5_1:
      return Groups<QuantType::kQ5_1>(w, xq, m, bias, y, g0, g1);
    case QuantType::kQ4_K:
      return Groups<QuantType::kQ4_K>(w, xq, m, bias, y, g0, g1);
    case QuantType::kQ5_K:
      return Groups<QuantType::kQ5_K>(w, xq, m, bias, y, g0, g1);
    case QuantType::kIQ4_NL:
      return Groups<QuantType::kIQ4_NL>(w, xq, m, bias, y, g0, g1);
    default:
      return Groups<QuantType::kQ6_K>(w, xq, m, bias, y, g0, g1);
  }
}

}  // namespace

void MatMulInt8Packed(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y) {
  const MatMulOutput out{&w, bias, y};
  MatMulInt8PackedShared(x, m, &out, 1);
}

void MatMulInt8PackedShared(const float* x, int64_t m, const MatMulOutput* outs, int32_t count) {
  SPANSERVE_CHECK(CpuHasAvx512Vnni());
  if (m <= 0 || count <= 0) return;
  const int64_t k = outs[0].w->cols, blocks = k / 32;
  bool halves = false;
  for (int32_t i = 0; i < count; ++i) {
    const WeightMatrix& w = *outs[i].w;
    SPANSERVE_CHECK(w.packed != nullptr && Int8PackedSupports(w.quant));
    SPANSERVE_CHECK_EQ(w.cols, k);
    if (m >= kInt8AmxMinRows && Int8PackedAmxSupports(w.quant) && CpuHasAmxInt8()) {
      // The tile path quantizes x its own way: one call per matrix.
      for (int32_t j = 0; j < count; ++j) {
        const MatMulOutput& o = outs[j];
        if (m >= kInt8AmxMinRows && Int8PackedAmxSupports(o.w->quant)) {
          MatMulInt8PackedAmx(x, m, *o.w, o.bias, o.y);
        } else {
          MatMulInt8PackedShared(x, m, &o, 1);
        }
      }
      return;
    }
    halves = halves || w.quant == QuantType::kQ6_K;
  }
  // x quantized once: int8 rows, then per block d, Σq and d·Σq (and where a matrix is Q6_K
  // the first half's Σq); the pointers, not the thread_local, go into the jobs.
  thread_local Buffer buffer;
  uint8_t* base = buffer.Reserve(m * k + m * blocks * 16);
  auto* q = reinterpret_cast<int8_t*>(base);
  auto* sums = reinterpret_cast<int32_t*>(base + m * k);
  auto* d = reinterpret_cast<float*>(sums + m * blocks);
  float* d_sums = d + m * blocks;
  auto* first_half_sums = reinterpret_cast<int32_t*>(d_sums + m * blocks);
  ParallelFor(m, 2, [&](int64_t i0, int64_t i1) {
    QuantizeRowsPlain(x + i0 * k, i1 - i0, k, q + i0 * k, d + i0 * blocks, sums + i0 * blocks);
    for (int64_t a = i0 * blocks; a < i1 * blocks; ++a) {
      d_sums[a] = d[a] * static_cast<float>(sums[a]);
      if (halves) {
        int32_t s0 = 0;
        for (int p = 0; p < 16; ++p) s0 += q[32 * a + p];
        first_half_sums[a] = s0;
      }
    }
  });
  const QuantizedX xq{q, d, sums, d_sums, halves ? first_half_sums : nullptr};
  // One job: each thread takes its share of every matrix in turn.
  Parallel([&](int64_t t, int64_t threads) {
    for (int32_t i = 0; i < count; ++i) {
      GroupsPart(*outs[i].w, xq, m, outs[i].bias, outs[i].y, t, threads);
    }
  });
}

}  // namespace spanserve::kernels::cpu::internal
