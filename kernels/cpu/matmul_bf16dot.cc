// bf16 dot-product MatMul (see matmul_bf16dot.h). Compiled with AVX512_BF16 and entered only
// where the CPU has it.
//
// Loop nest: x is rounded to bf16 into a shared buffer (rows split over the threads), then
// each thread takes a contiguous range of weight panels (kNr rows each):
//   for each x tile (<= kXTileBytes of bf16 rows)
//     for each panel of the thread's range
//       for each block of <= kMr x rows: micro-kernel kMr × kNr over the whole k
// In the first tile, the next panel is prefetched into L2 over the current panel's
// micro-kernel steps (as many lines per step as spread it evenly), so the weight stream runs
// ahead of the dot products when the weights come from memory. (Into L1 it evicted the x
// rows in use and cost a third more time per step.)
#include "kernels/cpu/matmul_bf16dot.h"
#include "common/thread_pool.h"
#include "kernels/cpu/matmul_avx512.h"  // first: it includes <immintrin.h> (see there)

#include <algorithm>
#include <cstdint>
#include <memory>

#include "common/check.h"

namespace spanserve::kernels::cpu::internal {
namespace {

constexpr int kMr = 4;  // x rows per micro-kernel
constexpr int kNr = 6;  // weight rows per micro-kernel (kMr × kNr = 24 accumulators)
constexpr int64_t kXTileBytes = 256 << 10;

// A mask of the first `count` (0-32) lanes of 32.
inline __mmask32 FirstLanes32(int64_t count) {
  return count >= 32 ? ~__mmask32{0} : (__mmask32{1} << count) - 1;
}
inline __mmask16 FirstLanes16(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff)
                     : static_cast<__mmask16>((1u << std::max<int64_t>(count, 0)) - 1);
}

// x[0, k) rounded to bf16 into out[0, kp), zero-padded to kp (a multiple of 32).
void RowToBf16(const float* x, int64_t k, uint16_t* out, int64_t kp) {
  for (int64_t p = 0; p < kp; p += 32) {
    const __m512 lo = _mm512_maskz_loadu_ps(FirstLanes16(k - p), x + p);
    const __m512 hi = _mm512_maskz_loadu_ps(FirstLanes16(k - p - 16), x + p + 16);
    _mm512_storeu_si512(out + p, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
}

// The part of the weight stream still to prefetch, and how many lines each step takes.
struct Prefetch {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t lines_per_step = 0;
};

struct MicroArgs {
  const uint16_t* x;  // [MR, kp] bf16 rows, stride kp
  int64_t kp;
  const uint16_t* w;  // [NR, k] bf16 rows, stride k
  int64_t k;
  Prefetch* prefetch;  // null: nothing to prefetch
  const float* bias;   // [NR] or null
  float* y;            // [MR, NR], stride ldy
  int64_t ldy;
};

template <int MR, int NR>
void Micro(const MicroArgs& a) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[i][r] = _mm512_setzero_ps();
  }
  const int64_t k = a.k;
  const auto step = [&](int64_t p, __mmask32 tail) __attribute__((always_inline)) {
    __m512bh xv[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      xv[i] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(a.x + i * a.kp + p));
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512bh wv =
          reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, a.w + r * k + p));
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv[i], wv);
    }
  };
  const int64_t k32 = k & ~int64_t{31};
  int64_t p = 0;
  if (a.prefetch != nullptr && a.prefetch->next < a.prefetch->end) {
    Prefetch& pf = *a.prefetch;
    for (; p < k32; p += 32) {
      for (int64_t l = 0; l < pf.lines_per_step && pf.next < pf.end; ++l, pf.next += 64) {
        _mm_prefetch(pf.next, _MM_HINT_T1);
      }
      step(p, ~__mmask32{0});
    }
  } else {
    for (; p < k32; p += 32) step(p, ~__mmask32{0});
  }
  if (p < k) step(p, FirstLanes32(k - p));
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const float s = _mm512_reduce_add_ps(acc[i][r]);
      a.y[i * a.ldy + r] = a.bias != nullptr ? s + a.bias[r] : s;
    }
  }
}

}  // namespace

bool CpuHasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

void MatMulBf16Dot(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                   float* y) {
  SPANSERVE_CHECK(w.dtype == DType::kBF16 && w.quant == QuantType::kNone);
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t kp = (k + 31) & ~int64_t{31};
  const auto* wd = static_cast<const uint16_t*>(w.data);
  // The bf16 copy of x, shared by the threads; it grows to the largest call, then is reused.
  // (A plain array: a std::vector instantiated here would carry AVX-512 code out of line.)
  struct Buffer {
    std::unique_ptr<uint16_t[]> data;
    int64_t size = 0;
  };
  thread_local Buffer x_buffer;
  if (x_buffer.size < m * kp) {
    x_buffer.data.reset(new uint16_t[m * kp]);
    x_buffer.size = m * kp;
  }
  uint16_t* xb = x_buffer.data.get();
  const int64_t x_tile =
      std::max<int64_t>(kMr, kXTileBytes / (2 * std::max<int64_t>(kp, 32)) / kMr * kMr);
  const int64_t panels = (n + kNr - 1) / kNr;

  // Every row is converted before any panel starts (two jobs: the first one's end is the
  // barrier).
  ParallelFor(m, 2, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) RowToBf16(x + i * k, k, xb + i * kp, kp);
  });
  if (k > 0 && k % 32 == 0 && CpuHasAmxBf16()) return MatMulBf16Amx(xb, kp, m, w, bias, y);
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t j_begin = panels * t / threads * kNr;
    const int64_t j_end = std::min(n, panels * (t + 1) / threads * kNr);
    float bias_panel[kNr];
    for (int64_t i0 = 0; i0 < m; i0 += x_tile) {
      const int64_t mt = std::min(x_tile, m - i0);
      for (int64_t j0 = j_begin; j0 < j_end; j0 += kNr) {
        const int64_t rows = std::min<int64_t>(kNr, j_end - j0);
        const float* b = nullptr;
        if (bias != nullptr) {
          for (int64_t r = 0; r < rows; ++r)
            bias_panel[r] = WeightAt(bias->data, bias->dtype, j0 + r);
          b = bias_panel;
        }
        // The next panel streams in over this panel's micro-kernel steps (first tile only:
        // later tiles find the weights in cache).
        Prefetch prefetch;
        if (i0 == 0 && j0 + kNr < j_end) {
          prefetch.next = reinterpret_cast<const char*>(wd + (j0 + kNr) * k);
          prefetch.end = reinterpret_cast<const char*>(wd + std::min(j0 + 2 * kNr, j_end) * k);
          const int64_t steps = std::max<int64_t>(1, (mt + kMr - 1) / kMr * (kp / 32));
          prefetch.lines_per_step = ((prefetch.end - prefetch.next + 63) / 64 + steps - 1) / steps;
        }
        for (int64_t i = 0; i < mt; i += kMr) {
          const MicroArgs args{xb + (i0 + i) * kp, kp, wd + j0 * k,           k,
                               &prefetch,          b,  y + (i0 + i) * n + j0, n};
          WithShape<kMr, kNr>(
              static_cast<int>(std::min<int64_t>(kMr, mt - i)), static_cast<int>(rows),
              [&](auto mr, auto nr) { Micro<decltype(mr)::value, decltype(nr)::value>(args); });
        }
      }
    }
  });
}

}  // namespace spanserve::kernels::cpu::internal
