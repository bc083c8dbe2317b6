// Integer dot-product MatMul (see matmul_int8dot.h): the activations' quantization, the split
// over threads, and the AVX2 kernels (VPMADDUBSW + VPMADDWD). The VNNI kernels are in
// matmul_int8dot_vnni.cc.
#include "kernels/cpu/matmul_int8dot.h"

#include "kernels/cpu/matmul_int8dot_kernels.h"  // first: it includes <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "common/check.h"
#include "common/thread_pool.h"

namespace spanserve::kernels::cpu::internal {
namespace {

struct DotAvx2 {
  static constexpr int kMaxMr = 4;
  // Within 16 ymm registers: MR·NR accumulators (and as many xmm min sums for Q4_1).
  static constexpr int Nr(int mr) { return mr == 1 ? 4 : mr == 2 ? 2 : 1; }
  // Lane l: Σ u[p]·s[p] over bytes 4l .. 4l + 3. A pair's sum never saturates 16 bits: the
  // kernels' u is at most 128 (|w|, Q8_0) and |s| at most 127.
  [[gnu::always_inline]] static __m256i Dot(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
};

// A buffer for quantized activations that grows to the largest call and is then reused.
struct QuantBuffer {
  std::unique_ptr<int8_t[]> q;
  std::unique_ptr<float[]> ds;
  int64_t q_size = 0;
  int64_t ds_size = 0;

  void Reserve(int64_t q_elements, int64_t ds_elements) {
    if (q_size < q_elements) {
      q.reset(new int8_t[q_elements]);
      q_size = q_elements;
    }
    if (ds_size < ds_elements) {
      ds.reset(new float[ds_elements]);
      ds_size = ds_elements;
    }
  }
};

// One row (k/32 blocks) quantized as matmul_int8dot.h says.
void QuantizeRow(const float* x, int64_t k, int8_t* q, float* ds) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < k / 32; ++b) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      v[c] = _mm256_loadu_ps(x + 32 * b + 8 * c);
      amax = _mm256_max_ps(amax, _mm256_and_ps(v[c], abs_mask));
    }
    const float max_abs = simd::HMax(amax);
    const float d = max_abs / 127.0f;
    const __m256 id = _mm256_set1_ps(max_abs != 0.0f ? 127.0f / max_abs : 0.0f);
    __m256i n[4];
    for (int c = 0; c < 4; ++c) {
      n[c] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[c], id),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    // Σq, then the 32 values packed to bytes in element order (|q| <= 127: no saturation).
    const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]),
                                             _mm256_packs_epi32(n[2], n[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b),
                        _mm256_permutevar8x32_epi32(bytes, order));
    ds[2 * b] = d;
    ds[2 * b + 1] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
  ds[2 * (k / 32)] = 0.0f;  // the padding the kernels read past the last block
  ds[2 * (k / 32) + 1] = 0.0f;
}

}  // namespace

bool CpuHasAvx512Vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

void QuantizeRowsInt8(const float* x, int64_t rows, int64_t k, int8_t* q, float* ds) {
  const int64_t ld_ds = 2 * (k / 32) + 2;
  for (int64_t i = 0; i < rows; ++i) QuantizeRow(x + i * k, k, q + i * k, ds + i * ld_ds);
}

void Int8DotRowsAvx2(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  int8dot::RowsOfAnyFormat<DotAvx2>(a, n0, n1);
}

void MatMulInt8Dot(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                   float* y, bool vnni) {
  SPANSERVE_CHECK(w.quant != QuantType::kNone);
  SPANSERVE_CHECK_EQ(w.cols % 32, 0);
  if (vnni) SPANSERVE_CHECK(CpuHasAvx512Vnni());
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const int64_t ld_ds = 2 * (k / 32) + 2;
  const auto rows_fn = vnni ? Int8DotRowsVnni : Int8DotRowsAvx2;
  // Each thread its own contiguous, 8-aligned range of output features.
  const auto range = [n](int64_t t, int64_t threads, int64_t* n0, int64_t* n1) {
    const int64_t per_thread = ((n + threads - 1) / threads + 7) & ~int64_t{7};
    *n0 = std::min(n, t * per_thread);
    *n1 = std::min(n, *n0 + per_thread);
  };
  if (m * k <= kInt8DotSharedQuantElements) {
    // Every thread quantizes the few rows itself: cheaper than a second job's barrier.
    Parallel([&](int64_t t, int64_t threads) {
      int64_t n0, n1;
      range(t, threads, &n0, &n1);
      if (n0 >= n1) return;
      thread_local QuantBuffer own;
      own.Reserve(m * k, m * ld_ds);
      QuantizeRowsInt8(x, m, k, own.q.get(), own.ds.get());
      rows_fn(Int8DotArgs{own.q.get(), own.ds.get(), ld_ds, m, &w, bias, y}, n0, n1);
    });
    return;
  }
  // Quantized once, rows split over the threads (the first job's end is the barrier).
  thread_local QuantBuffer shared;
  shared.Reserve(m * k, m * ld_ds);
  int8_t* q = shared.q.get();
  float* ds = shared.ds.get();
  ParallelFor(m, 2, [&](int64_t begin, int64_t end) {
    QuantizeRowsInt8(x + begin * k, end - begin, k, q + begin * k, ds + begin * ld_ds);
  });
  const Int8DotArgs args{q, ds, ld_ds, m, &w, bias, y};
  Parallel([&](int64_t t, int64_t threads) {
    int64_t n0, n1;
    range(t, threads, &n0, &n1);
    if (n0 < n1) rows_fn(args, n0, n1);
  });
}

}  // namespace spanserve::kernels::cpu::internal
