// The integer dot products on repacked Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weights (matmul_int8dot.h,
// "Packed weights"). Compiled with AVX512_VNNI and entered only where the CPU has it.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/matmul_int8dot.h"

// GCC 12 reports the pass-through operand of its own _mm512_cvtph_ps (never read with an
// all-ones mask) as maybe uninitialized once Group is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace spanserve::kernels::cpu::internal {
namespace {

// Up to MR x rows (x: their quantized rows, stride k; d, Σq and d·Σq per block, stride
// blocks) against one group's records: out[i] lane r = y[i, 16g + r] before the bias.
template <QuantType kQ, int MR>
void Group(const uint8_t* records, int64_t blocks, const int8_t* xq, int64_t k, const float* xd,
           const int32_t* xs, const float* xsd, __m512* out) {
  constexpr bool kMins = Int8PackedHasMins(kQ);
  // The offset the weights' unsigned quants carry: w_q = u − kOffset.
  constexpr int kOffset = kQ == QuantType::kQ8_0   ? 128
                          : kQ == QuantType::kQ4_0 ? 8
                          : kQ == QuantType::kQ5_0 ? 16
                                                   : 0;
  __m512 acc[MR], mins[MR];
  for (int i = 0; i < MR; ++i) {
    acc[i] = _mm512_setzero_ps();
    mins[i] = _mm512_setzero_ps();
  }
  const __m512i mask = _mm512_set1_epi8(0x0f);
  const __m512i sixteen = _mm512_set1_epi8(16);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* rec = records + b * Int8PackedRecordBytes(kQ);
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
      if constexpr (Int8PackedHasHighBits(kQ)) {  // + 16 where the fifth bit is set
        for (int j = 0; j < 8; ++j) {
          uint64_t bits;
          std::memcpy(&bits, rec + Int8PackedHighBitsAt(kQ) + 8 * j, 8);
          u[j] = _mm512_mask_add_epi8(u[j], _cvtu64_mask64(bits), u[j], sixteen);
        }
      }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec)));
    __m512 mw = _mm512_setzero_ps();
    if constexpr (kMins) {
      mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32)));
    }
    for (int i = 0; i < MR; ++i) {
      const int64_t at = i * blocks + b;
      const auto* xv = reinterpret_cast<const int32_t*>(xq + i * k + 32 * b);
      // The offset the weights went in with, taken back: D = Σ q·w exactly.
      __m512i dot = kOffset != 0 ? _mm512_set1_epi32(-kOffset * xs[at]) : _mm512_setzero_si512();
      for (int j = 0; j < 8; ++j) dot = _mm512_dpbusd_epi32(dot, u[j], _mm512_set1_epi32(xv[j]));
      acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(xd[at])), _mm512_cvtepi32_ps(dot),
                               acc[i]);
      if constexpr (kMins) mins[i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xsd[at]), mins[i]);
    }
  }
  for (int i = 0; i < MR; ++i) out[i] = kMins ? _mm512_add_ps(acc[i], mins[i]) : acc[i];
}

template <QuantType kQ>
void Groups(const WeightMatrix& w, const int8_t* xq, const float* xd, const int32_t* xs,
            const float* xsd, int64_t m, const WeightVector* bias, float* y, int64_t g0,
            int64_t g1) {
  const int64_t n = w.rows, k = w.cols, blocks = k / 32;
  const auto* packed = static_cast<const uint8_t*>(w.packed);
  constexpr int kMr = 4;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = 16 * g;
    const int64_t rows = std::min<int64_t>(16, n - r0);
    const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
    alignas(64) float bias_panel[16] = {};
    if (bias != nullptr) {
      for (int64_t r = 0; r < rows; ++r) bias_panel[r] = WeightAt(bias->data, bias->dtype, r0 + r);
    }
    const __m512 bv = _mm512_load_ps(bias_panel);
    const uint8_t* records = packed + g * blocks * Int8PackedRecordBytes(kQ);
    for (int64_t i0 = 0; i0 < m; i0 += kMr) {
      const int64_t mr = std::min<int64_t>(kMr, m - i0);
      __m512 out[kMr] = {};
      const int8_t* x = xq + i0 * k;
      const int64_t at = i0 * blocks;
      switch (mr) {
        case 1:
          Group<kQ, 1>(records, blocks, x, k, xd + at, xs + at, xsd + at, out);
          break;
        case 2:
          Group<kQ, 2>(records, blocks, x, k, xd + at, xs + at, xsd + at, out);
          break;
        case 3:
          Group<kQ, 3>(records, blocks, x, k, xd + at, xs + at, xsd + at, out);
          break;
        default:
          Group<kQ, 4>(records, blocks, x, k, xd + at, xs + at, xsd + at, out);
          break;
      }
      for (int64_t i = 0; i < mr; ++i) {
        const __m512 v = bias != nullptr ? _mm512_add_ps(out[i], bv) : out[i];
        _mm512_mask_storeu_ps(y + (i0 + i) * n + r0, lanes, v);
      }
    }
  }
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
  const int64_t block_bytes = QuantBlockBytes(q);
  const auto* src = static_cast<const uint8_t*>(w.data);
  const int64_t groups = (n + 15) / 16;
  std::memset(out, 0, Int8PackedBytes(q, n, k));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* rec = out + (g * blocks + b) * Int8PackedRecordBytes(q);
      for (int64_t r = 0; r < 16 && 16 * g + r < n; ++r) {
        const uint8_t* block = src + ((16 * g + r) * blocks + b) * block_bytes;
        std::memcpy(rec + 2 * r, block, 2);                                     // d
        if (Int8PackedHasMins(q)) std::memcpy(rec + 32 + 2 * r, block + 2, 2);  // m
        uint8_t* quants = rec + Int8PackedQuantsAt(q);
        if (q == QuantType::kQ8_0) {
          for (int j = 0; j < 8; ++j) {
            for (int e = 0; e < 4; ++e) {
              quants[64 * j + 4 * r + e] = static_cast<uint8_t>(block[2 + 4 * j + e] ^ 0x80);
            }
          }
          continue;
        }
        // Q4_0: d, qs; Q4_1: d, m, qs; Q5_0: d, qh, qs; Q5_1: d, m, qh, qs.
        const int64_t qh_at = Int8PackedHasMins(q) ? 4 : 2;
        const uint8_t* qs = block + qh_at + (Int8PackedHasHighBits(q) ? 4 : 0);
        // Byte p of the block's 16: element p (low nibble) and p + 16 (high).
        for (int j = 0; j < 4; ++j) {
          for (int e = 0; e < 4; ++e) quants[64 * j + 4 * r + e] = qs[4 * j + e];
        }
        if (Int8PackedHasHighBits(q)) {
          uint32_t qh;
          std::memcpy(&qh, block + qh_at, 4);
          uint8_t* masks = rec + Int8PackedHighBitsAt(q);
          for (int j = 0; j < 8; ++j) {
            for (int e = 0; e < 4; ++e) {
              const int bit = 4 * static_cast<int>(r) + e;
              masks[8 * j + bit / 8] |=
                  static_cast<uint8_t>(((qh >> (4 * j + e)) & 1) << (bit % 8));
            }
          }
        }
      }
    }
  }
}

void MatMulInt8Packed(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y) {
  SPANSERVE_CHECK(w.packed != nullptr && Int8PackedSupports(w.quant));
  SPANSERVE_CHECK(CpuHasAvx512Vnni());
  const int64_t n = w.rows, k = w.cols, blocks = k / 32;
  if (m <= 0 || n <= 0) return;
  if (m >= kInt8AmxMinRows && Int8PackedAmxSupports(w.quant) && CpuHasAmxInt8()) {
    return MatMulInt8PackedAmx(x, m, w, bias, y);
  }
  // x quantized once: int8 rows, then per block d, Σq and d·Σq (the pointers, not the
  // thread_local, go into the jobs).
  thread_local Buffer buffer;
  uint8_t* base = buffer.Reserve(m * k + m * blocks * 12);
  auto* xq = reinterpret_cast<int8_t*>(base);
  auto* xs = reinterpret_cast<int32_t*>(base + m * k);
  auto* xd = reinterpret_cast<float*>(xs + m * blocks);
  float* xsd = xd + m * blocks;
  ParallelFor(m, 2, [&](int64_t i0, int64_t i1) {
    QuantizeRowsPlain(x + i0 * k, i1 - i0, k, xq + i0 * k, xd + i0 * blocks, xs + i0 * blocks);
    for (int64_t a = i0 * blocks; a < i1 * blocks; ++a) xsd[a] = xd[a] * static_cast<float>(xs[a]);
  });
  const int64_t groups = (n + 15) / 16;
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t g0 = groups * t / threads, g1 = groups * (t + 1) / threads;
    if (g0 >= g1) return;
    switch (w.quant) {
      case QuantType::kQ8_0:
        return Groups<QuantType::kQ8_0>(w, xq, xd, xs, xsd, m, bias, y, g0, g1);
      case QuantType::kQ4_0:
        return Groups<QuantType::kQ4_0>(w, xq, xd, xs, xsd, m, bias, y, g0, g1);
      case QuantType::kQ5_0:
        return Groups<QuantType::kQ5_0>(w, xq, xd, xs, xsd, m, bias, y, g0, g1);
      case QuantType::kQ5_1:
        return Groups<QuantType::kQ5_1>(w, xq, xd, xs, xsd, m, bias, y, g0, g1);
      default:
        return Groups<QuantType::kQ4_1>(w, xq, xd, xs, xsd, m, bias, y, g0, g1);
    }
  });
}

}  // namespace spanserve::kernels::cpu::internal
