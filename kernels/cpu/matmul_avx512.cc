// AVX-512 batched MatMul (see matmul_avx512.h for why its output equals the AVX2 path's).
//
// Loop nest, per thread over its own weight rows [n0, n1):
//   for each x tile of rows (kept in L2): pack rows in pairs interleaved by 8
//     for each panel of <= kPanelRows weight rows (one micro-kernel's)
//       (prefetching the next panel from memory while the micro-kernels run)
//       for each block of kKc elements of k: widen the panel's block to f32 (stays in L1)
//         for each block of <= kMaxPairs x pairs: micro-kernel
// A micro-kernel holds kMaxPairs × kMaxNr = 24 zmm accumulators (48 dot products) and per
// 8 elements of k loads kMaxPairs x pairs and broadcasts kMaxNr weight chunks: 24 FMAs for
// 10 loads.
#include "kernels/cpu/matmul_avx512.h"  // first: it includes <immintrin.h> (see there)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu::internal {
namespace {

constexpr int kMaxPairs = 4;  // x row pairs per micro-kernel (8 rows)
constexpr int kMaxNr = 6;     // weight rows per micro-kernel
constexpr int64_t kBlockRows = 2 * kMaxPairs;
// One micro-kernel group per panel and 512 elements of k per block: the widened panel block
// (12 KiB) and an 8-row x block (16 KiB) share L1, and each micro-kernel call runs 64 steps
// between loading and storing its accumulators. Measured against 24 rows × 256 and 12 × 128
// (bf16, min of 5-400 interleaved calls per shape, 2026-11-29): faster at every m
// from 5 to 512 (docs/KERNELS.md). The blocking never changes a bit of the output.
constexpr int64_t kPanelRows = kMaxNr;  // one micro-kernel's weight rows
constexpr int64_t kKc = 512;
static_assert(kKc % 256 == 0, "k blocks must be whole K-quant super-blocks");
constexpr int64_t kXTileBytes = 512 << 10;

// Sixteen weights starting at element i, widened to f32 (exact, as simd::Load8).
template <DType kW>
inline __m512 Load16(const void* base, int64_t i) {
  if constexpr (kW == DType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (kW == DType::kBF16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

// Widens elements [p0, p1) of `rows` weight rows (stride ldw elements) to f32 rows of
// p1 - p0 floats (a multiple of 8), stride ldp.
// Quantized rows are dequantized (dequant.cc's arithmetic; p0 and p1 are then multiples of
// the block, 32 or 256, since their k is and kKc is).
template <WFmt F>
void WidenRows(const void* w, int64_t ldw, int64_t rows, int64_t p0, int64_t p1, float* panel,
               int64_t ldp) {
  for (int64_t r = 0; r < rows; ++r) {
    const void* src = RowAt<F>(w, r, ldw);
    if constexpr (IsQuant(F)) {
      RowToF32<F>(src, p0, p1, panel + r * ldp);
    } else {
      constexpr DType kW = FloatType(F);
      float* dst = panel + r * ldp - p0;
      int64_t p = p0;
      for (; p + 16 <= p1; p += 16) _mm512_store_ps(dst + p, Load16<kW>(src, p));
      if (p < p1) _mm256_store_ps(dst + p, simd::Load8<kW>(src, p));
    }
  }
}

// Packs x rows [0, rows) (stride ldx) into ceil(rows / 2) pairs of 2·k8 floats: pair t holds
// rows 2t and 2t + 1 interleaved by 8 (an odd last row is paired with itself).
void PackXPairs(const float* x, int64_t ldx, int64_t rows, int64_t k8, float* packed) {
  for (int64_t r = 0; r < rows; r += 2) {
    const float* a = x + r * ldx;
    const float* b = r + 1 < rows ? a + ldx : a;
    float* dst = packed + r * k8;
    for (int64_t p = 0; p < k8; p += 8) {
      _mm512_store_ps(dst + 2 * p,
                      _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(a + p)),
                                         _mm256_loadu_ps(b + p), 1));
    }
  }
}

// The next panel's lines still to prefetch, `per_step` of them per 8 elements of k in the
// micro-kernels: enough that the panel's micro-kernel steps cover the whole next panel.
struct Prefetch {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t per_step = 1;
};

struct MicroArgs {
  const float* xpairs;  // [NP pairs, 2·k8] packed x
  const float* w;       // [NR, p1 - p0] widened weight rows, stride ldp (a multiple of 16)
  int64_t ldp;
  int64_t k8;
  int64_t p0, p1;    // the k block [p0, p1) this call adds
  float* acc;        // [NP, NR, 16] accumulators carried between k blocks
  bool first, last;  // first: start from zero; last: finish into y
  // For `last` only:
  const float* x;     // the x rows as given (k-tail), stride k
  int64_t m_rows;     // valid x rows in this block (<= 2·NP)
  const void* w_raw;  // the weight rows as stored (k-tail), stride k
  DType dtype;
  int64_t k;
  const float* bias;  // [NR] or null
  float* y;           // [m_rows, NR], stride ldy
  int64_t ldy;
  Prefetch* prefetch;
};

// y for x row i and weight row r from the reduced 8-lane sum: k-tail, bias; exactly the
// AVX2 micro-kernel's epilogue.
inline void Finish(const MicroArgs& a, int64_t i, int64_t r, float s) {
  if (a.k8 < a.k) {
    const char* row =
        static_cast<const char*>(a.w_raw) + r * a.k * static_cast<int64_t>(DTypeSize(a.dtype));
    for (int64_t p = a.k8; p < a.k; ++p) {
      s = std::fma(a.x[i * a.k + p], WeightAt(row, a.dtype, p), s);
    }
  }
  a.y[i * a.ldy + r] = a.bias != nullptr ? s + a.bias[r] : s;
}

// acc[t][r] (lanes 0-7: x row 2t, lanes 8-15: x row 2t + 1) += x pair t · weight row r,
// over the k block, 8 elements at a time with the weights broadcast to both halves.
template <int NP, int NR>
void Micro(const MicroArgs& a) {
  __m512 acc[NP][NR];
#pragma GCC unroll 4
  for (int t = 0; t < NP; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      acc[t][r] = a.first ? _mm512_setzero_ps() : _mm512_load_ps(a.acc + (t * NR + r) * 16);
    }
  }
  const float* xp[NP];
  const float* wp[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NP; ++t) xp[t] = a.xpairs + t * 2 * a.k8 + 2 * a.p0;
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) wp[r] = a.w + r * a.ldp;
  const auto step = [&](int64_t p) __attribute__((always_inline)) {
    __m512 xv[NP];
#pragma GCC unroll 4
    for (int t = 0; t < NP; ++t) xv[t] = _mm512_load_ps(xp[t] + 2 * p);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512 wv = _mm512_broadcast_f32x8(_mm256_load_ps(wp[r] + p));
#pragma GCC unroll 4
      for (int t = 0; t < NP; ++t) acc[t][r] = _mm512_fmadd_ps(xv[t], wv, acc[t][r]);
    }
  };
  // The first steps also prefetch the next panel, prefetch->per_step lines each.
  const int64_t len = a.p1 - a.p0;
  const char* pf = a.prefetch->next;
  const int64_t per_step = a.prefetch->per_step;
  const int64_t pf_lines = a.prefetch->end > pf ? (a.prefetch->end - pf + 63) / 64 : 0;
  const int64_t pf_len = std::min(len, (pf_lines + per_step - 1) / per_step * 8);
  int64_t p = 0;
  for (; p < pf_len; p += 8) {
    for (int64_t l = 0; l < per_step; ++l) _mm_prefetch(pf + 64 * l, _MM_HINT_T1);
    pf += 64 * per_step;
    step(p);
  }
  for (; p < len; p += 8) step(p);
  a.prefetch->next = pf;
  if (!a.last) {
    for (int t = 0; t < NP; ++t) {
      for (int r = 0; r < NR; ++r) _mm512_store_ps(a.acc + (t * NR + r) * 16, acc[t][r]);
    }
    return;
  }
  // Both 8-lane halves of every accumulator reduced at once, in simd::HSum's order:
  // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)); lane 0 and lane 8 hold the sums.
  alignas(64) float sums[NP][NR][16];
#pragma GCC unroll 4
  for (int t = 0; t < NP; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      __m512 v = acc[t][r];
      v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // + the other 128-bit block
      v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));        // + the other 64-bit pair
      v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));        // + the neighbour
      _mm512_store_ps(sums[t][r], v);
    }
  }
  for (int t = 0; t < NP; ++t) {
    for (int half = 0; half < 2; ++half) {
      const int64_t i = 2 * t + half;
      if (i >= a.m_rows) break;
      for (int r = 0; r < NR; ++r) Finish(a, i, r, sums[t][r][8 * half]);
    }
  }
}

// Per-thread 64-byte-aligned scratch; grows to the largest size seen, then never again.
float* Scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats + 16) buffer.resize(floats + 16);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<float*>((address + 63) & ~uintptr_t{63});
}

template <WFmt kW>
void RowsTyped(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias, float* y,
               int64_t n0, int64_t n1) {
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t k8 = k & ~int64_t{7};
  const int64_t row_bytes = RowBytes<kW>(k);
  // Two row blocks at least, so a decode batch of 16 widens every panel once.
  const int64_t x_tile = std::max<int64_t>(
      2 * kBlockRows, kXTileBytes / (std::max<int64_t>(k, 1) * 4) / kBlockRows * kBlockRows);
  const int64_t ldp = kKc;  // widened panel rows hold one k block
  const int64_t row_blocks = (std::min(x_tile, m) + kBlockRows - 1) / kBlockRows;
  constexpr int64_t kAccFloats = kMaxPairs * kMaxNr * 16;  // one micro-kernel's accumulators
  thread_local std::vector<float> panel_buffer, x_buffer, acc_buffer;
  float* panel = Scratch(panel_buffer, kPanelRows * kKc);
  float* xpairs = Scratch(x_buffer, (std::min(x_tile, m) + 1) * std::max<int64_t>(k8, 8));
  float* acc = Scratch(acc_buffer, row_blocks * kAccFloats);
  float bias_panel[kPanelRows];

  for (int64_t i0 = 0; i0 < m; i0 += x_tile) {
    const int64_t mt = std::min(x_tile, m - i0);
    PackXPairs(x + i0 * k, k, mt, k8, xpairs);
    for (int64_t j0 = n0; j0 < n1; j0 += kPanelRows) {
      const int64_t rows = std::min(kPanelRows, n1 - j0);
      const float* b = nullptr;
      if (bias != nullptr) {
        for (int64_t r = 0; r < rows; ++r)
          bias_panel[r] = WeightAt(bias->data, bias->dtype, j0 + r);
        b = bias_panel;
      }
      const void* wj = RowAt<kW>(w.data, j0, k);
      // The next panel streams in while this one is multiplied.
      Prefetch prefetch;
      if (j0 + rows < n1) {
        prefetch.next = static_cast<const char*>(wj) + rows * row_bytes;
        prefetch.end = prefetch.next + std::min(kPanelRows, n1 - j0 - rows) * row_bytes;
        // This panel's micro-kernel steps: k8 / 8 per row block.
        const int64_t steps = std::max<int64_t>(1, k8 / 8 * ((mt + kBlockRows - 1) / kBlockRows));
        prefetch.per_step =
            std::max<int64_t>(1, ((prefetch.end - prefetch.next + 63) / 64 + steps - 1) / steps);
      }
      // k blocks outermost: every row block reuses the widened block from L1; the
      // accumulators wait in `acc` between blocks.
      for (int64_t p0 = 0;; p0 += kKc) {
        const int64_t p1 = std::min(k8, p0 + kKc);
        const bool first = p0 == 0;
        const bool last = p1 == k8;
        WidenRows<kW>(wj, k, rows, p0, p1, panel, ldp);
        for (int64_t i = 0, block = 0; i < mt; i += kBlockRows, ++block) {
          const int64_t m_rows = std::min<int64_t>(kBlockRows, mt - i);
          const int np = static_cast<int>((m_rows + 1) / 2);
          const MicroArgs args{xpairs + i * k8,
                               panel,
                               ldp,
                               k8,
                               p0,
                               p1,
                               acc + block * kAccFloats,
                               first,
                               last,
                               x + (i0 + i) * k,
                               m_rows,
                               wj,
                               FloatType(kW),  // k-tails exist for float rows only
                               k,
                               b,
                               y + (i0 + i) * n + j0,
                               n,
                               &prefetch};
          WithShape<kMaxPairs, kMaxNr>(np, static_cast<int>(rows), [&](auto p, auto r) {
            Micro<decltype(p)::value, decltype(r)::value>(args);
          });
        }
        if (last) break;
      }
    }
  }
}

}  // namespace

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return has;
}

void MatMulRowsAvx512(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y, int64_t n0, int64_t n1) {
  if (n0 >= n1) return;
  WithFormat(FormatOf(w), [&](auto f) { RowsTyped<decltype(f)::value>(x, m, w, bias, y, n0, n1); });
}

}  // namespace spanserve::kernels::cpu::internal
