#include "tools/bench/roofline.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "common/thread_pool.h"

namespace spanserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kChains = 24;  // enough independent FMAs to cover the latency on both ports
constexpr int64_t kFmaSteps = 2'000'000;

// The sum of every lane of the chains: the loops return it so that they cannot be dropped.
__attribute__((target("avx512f"))) float SumChains(const __m512* a) {
  __m512 sum = a[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, a[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float s = 0;
  for (float l : lanes) s += l;
  return s;
}

__attribute__((target("avx512f"))) float FmaChainsZmm(int64_t steps) {
  __m512 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm512_set1_ps(1e-3f * static_cast<float>(i));
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-4f);
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) a[i] = _mm512_fmadd_ps(a[i], x, y);
  }
  return SumChains(a);
}

__attribute__((target("avx512f,avx512bf16"))) float Bf16DotChains(int64_t steps) {
  __m512 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm512_set1_ps(1e-3f * static_cast<float>(i));
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999f), _mm512_set1_ps(0.5f));
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(2e-4f));
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) a[i] = _mm512_dpbf16_ps(a[i], x, y);
  }
  return SumChains(a);
}

// VPDPBUSD: 64 u8 × s8 products summed into 16 int32 lanes per instruction, 24 chains in
// zmm8..zmm31. (Written out: with the intrinsic on an array GCC 12 copies or spills each
// accumulator around its VPDPBUSD.)
__attribute__((target("avx512f,avx512vnni"))) float VnniChains(int64_t steps) {
  static_assert(kChains == 24);
  const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
  int64_t n = steps;
  asm volatile(
      "1:\n"
      "vpdpbusd %[y], %[x], %%zmm8\n"
      "vpdpbusd %[y], %[x], %%zmm9\n"
      "vpdpbusd %[y], %[x], %%zmm10\n"
      "vpdpbusd %[y], %[x], %%zmm11\n"
      "vpdpbusd %[y], %[x], %%zmm12\n"
      "vpdpbusd %[y], %[x], %%zmm13\n"
      "vpdpbusd %[y], %[x], %%zmm14\n"
      "vpdpbusd %[y], %[x], %%zmm15\n"
      "vpdpbusd %[y], %[x], %%zmm16\n"
      "vpdpbusd %[y], %[x], %%zmm17\n"
      "vpdpbusd %[y], %[x], %%zmm18\n"
      "vpdpbusd %[y], %[x], %%zmm19\n"
      "vpdpbusd %[y], %[x], %%zmm20\n"
      "vpdpbusd %[y], %[x], %%zmm21\n"
      "vpdpbusd %[y], %[x], %%zmm22\n"
      "vpdpbusd %[y], %[x], %%zmm23\n"
      "vpdpbusd %[y], %[x], %%zmm24\n"
      "vpdpbusd %[y], %[x], %%zmm25\n"
      "vpdpbusd %[y], %[x], %%zmm26\n"
      "vpdpbusd %[y], %[x], %%zmm27\n"
      "vpdpbusd %[y], %[x], %%zmm28\n"
      "vpdpbusd %[y], %[x], %%zmm29\n"
      "vpdpbusd %[y], %[x], %%zmm30\n"
      "vpdpbusd %[y], %[x], %%zmm31\n"
      "dec %[n]\n"
      "jnz 1b\n"
      : [n] "+r"(n)
      : [x] "v"(x), [y] "v"(y)
      : "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17",
        "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "zmm24", "zmm25", "zmm26", "zmm27",
        "zmm28", "zmm29", "zmm30", "zmm31", "cc");
  return static_cast<float>(n);
}

float FmaChainsYmm(int64_t steps) {
  __m256 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm256_set1_ps(1e-3f * static_cast<float>(i));
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-4f);
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) a[i] = _mm256_fmadd_ps(a[i], x, y);
  }
  alignas(32) float lanes[8];
  for (int i = 1; i < kChains; ++i) a[0] = _mm256_add_ps(a[0], a[i]);
  _mm256_store_ps(lanes, a[0]);
  float s = 0;
  for (float l : lanes) s += l;
  return s;
}

volatile float g_sink;

}  // namespace

float ParallelSum(const float* data, int64_t n) {
  std::vector<float> partial(ParallelThreads(), 0.0f);
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t per = (n / threads) & ~int64_t{31};
    const int64_t begin = t * per;
    const int64_t end = t == threads - 1 ? n : begin + per;
    float total = 0.0f;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(data + i));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(data + i + 8));
      a2 = _mm256_add_ps(a2, _mm256_loadu_ps(data + i + 16));
      a3 = _mm256_add_ps(a3, _mm256_loadu_ps(data + i + 24));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (float l : lanes) total += l;
    for (; i < end; ++i) total += data[i];
    partial[t] = total;
  });
  float total = 0.0f;
  for (float p : partial) total += p;
  return total;
}

double MeasureMemoryReadBytesPerSecond(int reps) {
  const int64_t floats = (int64_t{256} << 20) / 4;
  const std::vector<float> buffer(floats, 1.0f);
  g_sink = ParallelSum(buffer.data(), floats);  // pages the buffer in
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    g_sink = ParallelSum(buffer.data(), floats);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 4.0 * static_cast<double>(floats) / s);
  }
  return best;
}

// Best of `reps` runs of `chains` on every OpenMP thread, at `flops_per_step` per thread.
template <typename Chains>
double PeakFlops(Chains chains, double flops_per_step, int reps) {
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const int64_t threads = ParallelThreads();
    std::vector<float> sums(threads, 0.0f);
    const auto t0 = Clock::now();
    Parallel([&](int64_t t, int64_t) { sums[t] = chains(kFmaSteps); });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    float sum = 0;
    for (float v : sums) sum += v;
    g_sink = sum;
    best = std::max(best, threads * flops_per_step * static_cast<double>(kFmaSteps) / s);
  }
  return best;
}

double MeasureFmaPeakFlops(bool avx512, int reps) {
  const double lanes = avx512 ? 16 : 8;
  return PeakFlops(avx512 ? FmaChainsZmm : FmaChainsYmm, 2.0 * lanes * kChains, reps);
}

double MeasureBf16DotPeakFlops(int reps) {
  return PeakFlops(Bf16DotChains, 4.0 * 16 * kChains, reps);
}

double MeasureVnniPeakMacs(int reps) { return PeakFlops(VnniChains, 64.0 * kChains, reps); }

}  // namespace spanserve::bench
