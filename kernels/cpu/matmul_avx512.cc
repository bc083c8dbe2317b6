// AVX-512 batched MatMul (see matmul_avx512.h for why its output equals the AVX2 path's).
//
// Loop nest, per thread over its own weight rows [n0, n1):
//   for each x tile of rows (kept in L2)
//     for each panel of kPanelRows weight rows: widen once into pairs interleaved by 8
//       (prefetching the next panel from memory while the micro-kernels run)
//       for each block of <= kMaxMr x rows
//         for each group of <= kPairs row pairs: micro-kernel over the full k
// A micro-kernel holds kMaxMr × kPairs = 24 zmm accumulators (48 dot products), loads
// kPairs weight vectors and kMaxMr broadcast x chunks per 8 elements of k, and so runs 24
// FMAs for 11 loads: bound by the FMA ports, not by the loads.
#include "kernels/cpu/matmul_avx512.h"

// GCC 12's _mm512_undefined_ps (inside _mm512_broadcast_f32x8) reads itself to make an
// undefined value, which -Wuninitialized reports at every use; nothing here is uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu::internal {
namespace {

constexpr int kMaxMr = 8;
constexpr int kPairs = 3;
constexpr int64_t kPanelRows = 24;  // 12 pairs: four micro-kernel groups
constexpr int64_t kXTileBytes = 256 << 10;
// Lines of the next panel prefetched per 8 elements of k in the micro-kernels.
constexpr int kPrefetchLinesPerStep = 2;

template <DType kW>
const void* RowPtr(const void* w, int64_t row, int64_t ld) {
  return static_cast<const char*>(w) + row * ld * static_cast<int64_t>(DTypeSize(kW));
}

// Elements [p, p + 8) of rows a and b, widened, in the low and high halves of one register.
template <DType kW>
inline __m512 LoadPair(const void* a, const void* b, int64_t p) {
  if constexpr (kW == DType::kF32) {
    const __m256 lo = _mm256_loadu_ps(static_cast<const float*>(a) + p);
    const __m256 hi = _mm256_loadu_ps(static_cast<const float*>(b) + p);
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  } else {
    const __m128i lo =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(a) + p));
    const __m128i hi =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(b) + p));
    const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    if constexpr (kW == DType::kBF16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

// Widens `rows` weight rows (stride ldw elements) into ceil(rows / 2) pairs of 2·k8 floats:
// pair q holds rows 2q and 2q + 1 interleaved by 8 (an odd last row is paired with itself).
template <DType kW>
void WidenPairs(const void* w, int64_t ldw, int64_t rows, int64_t k8, float* panel) {
  for (int64_t r = 0; r < rows; r += 2) {
    const void* a = RowPtr<kW>(w, r, ldw);
    const void* b = r + 1 < rows ? RowPtr<kW>(w, r + 1, ldw) : a;
    float* dst = panel + r * k8;
    for (int64_t p = 0; p < k8; p += 8) _mm512_store_ps(dst + 2 * p, LoadPair<kW>(a, b, p));
  }
}

struct Prefetch {
  const char* next = nullptr;
  const char* end = nullptr;
};

struct MicroArgs {
  const float* x;  // [MR, k], stride ldx
  int64_t ldx;
  const float* pairs;  // [NP, 2·k8] interleaved widened weights
  int64_t k8, k;
  const void* w;  // the same rows as stored (for the k-tail), stride k
  DType dtype;
  int64_t rows;       // valid weight rows in this group (<= 2·NP)
  const float* bias;  // [rows] or null
  float* y;           // [MR, rows], stride ldy
  int64_t ldy;
  Prefetch* prefetch;
};

// Output (i, r) of a group from the 8-lane half of its accumulator: HSum, k-tail, bias;
// exactly the AVX2 micro-kernel's epilogue.
inline void Finish(const MicroArgs& a, int i, int64_t r, __m256 half) {
  float s = simd::HSum(half);
  const char* row =
      static_cast<const char*>(a.w) + r * a.k * static_cast<int64_t>(DTypeSize(a.dtype));
  for (int64_t p = a.k8; p < a.k; ++p)
    s = std::fma(a.x[i * a.ldx + p], WeightAt(row, a.dtype, p), s);
  a.y[i * a.ldy + r] = a.bias != nullptr ? s + a.bias[r] : s;
}

template <int MR, int NP>
void Micro(const MicroArgs& a) {
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int q = 0; q < NP; ++q) acc[i][q] = _mm512_setzero_ps();
  }
  const int64_t stride = 2 * a.k8;
  const char* pf = a.prefetch->next;
  const char* const pf_end = a.prefetch->end;
  for (int64_t p = 0; p < a.k8; p += 8) {
    if (pf < pf_end) {
#pragma GCC unroll 4
      for (int l = 0; l < kPrefetchLinesPerStep; ++l) _mm_prefetch(pf + 64 * l, _MM_HINT_T1);
      pf += 64 * kPrefetchLinesPerStep;
    }
    __m512 wv[NP];
#pragma GCC unroll 4
    for (int q = 0; q < NP; ++q) wv[q] = _mm512_load_ps(a.pairs + q * stride + 2 * p);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(a.x + i * a.ldx + p));
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q) acc[i][q] = _mm512_fmadd_ps(xv, wv[q], acc[i][q]);
    }
  }
  a.prefetch->next = pf;
  for (int i = 0; i < MR; ++i) {
    for (int q = 0; q < NP; ++q) {
      Finish(a, i, 2 * q, _mm512_castps512_ps256(acc[i][q]));
      if (2 * q + 1 < a.rows) Finish(a, i, 2 * q + 1, _mm512_extractf32x8_ps(acc[i][q], 1));
    }
  }
}

template <int MR>
void MicroNp(int np, const MicroArgs& a) {
  switch (np) {
    case 1:
      return Micro<MR, 1>(a);
    case 2:
      return Micro<MR, 2>(a);
    default:
      return Micro<MR, 3>(a);
  }
}

void RunMicro(int mr, int np, const MicroArgs& a) {
  switch (mr) {
    case 1:
      return MicroNp<1>(np, a);
    case 2:
      return MicroNp<2>(np, a);
    case 3:
      return MicroNp<3>(np, a);
    case 4:
      return MicroNp<4>(np, a);
    case 5:
      return MicroNp<5>(np, a);
    case 6:
      return MicroNp<6>(np, a);
    case 7:
      return MicroNp<7>(np, a);
    default:
      return MicroNp<8>(np, a);
  }
}

// Per-thread 64-byte-aligned scratch for a widened panel; grows to the largest k seen.
float* PanelBuffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats + 16) buffer.resize(floats + 16);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<float*>((address + 63) & ~uintptr_t{63});
}

template <DType kW>
void RowsTyped(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias, float* y,
               int64_t n0, int64_t n1) {
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t k8 = k & ~int64_t{7};
  const int64_t row_bytes = k * static_cast<int64_t>(DTypeSize(kW));
  const int64_t x_tile =
      std::max<int64_t>(kMaxMr, kXTileBytes / (std::max<int64_t>(k, 1) * 4) / kMaxMr * kMaxMr);
  float* panel = PanelBuffer(kPanelRows * std::max<int64_t>(k8, 8));
  float bias_panel[kPanelRows];

  for (int64_t i0 = 0; i0 < m; i0 += x_tile) {
    const int64_t mt = std::min(x_tile, m - i0);
    for (int64_t j0 = n0; j0 < n1; j0 += kPanelRows) {
      const int64_t rows = std::min(kPanelRows, n1 - j0);
      const float* b = nullptr;
      if (bias != nullptr) {
        for (int64_t r = 0; r < rows; ++r)
          bias_panel[r] = WeightAt(bias->data, bias->dtype, j0 + r);
        b = bias_panel;
      }
      const void* wj = RowPtr<kW>(w.data, j0, k);
      WidenPairs<kW>(wj, k, rows, k8, panel);
      // The next panel streams in while this one is multiplied.
      Prefetch prefetch;
      if (j0 + rows < n1) {
        prefetch.next = static_cast<const char*>(wj) + rows * row_bytes;
        prefetch.end = prefetch.next + std::min(kPanelRows, n1 - j0 - rows) * row_bytes;
      }
      const int64_t pairs = (rows + 1) / 2;
      for (int64_t i = 0; i < mt; i += kMaxMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMaxMr, mt - i));
        for (int64_t g = 0; g < pairs; g += kPairs) {
          const int np = static_cast<int>(std::min<int64_t>(kPairs, pairs - g));
          const MicroArgs args{x + (i0 + i) * k,
                               k,
                               panel + g * 2 * k8,
                               k8,
                               k,
                               RowPtr<kW>(wj, 2 * g, k),
                               kW,
                               std::min<int64_t>(2 * np, rows - 2 * g),
                               b != nullptr ? b + 2 * g : nullptr,
                               y + (i0 + i) * n + j0 + 2 * g,
                               n,
                               &prefetch};
          RunMicro(mr, np, args);
        }
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
  switch (w.dtype) {
    case DType::kF32:
      return RowsTyped<DType::kF32>(x, m, w, bias, y, n0, n1);
    case DType::kBF16:
      return RowsTyped<DType::kBF16>(x, m, w, bias, y, n0, n1);
    case DType::kF16:
      return RowsTyped<DType::kF16>(x, m, w, bias, y, n0, n1);
  }
}

}  // namespace spanserve::kernels::cpu::internal
