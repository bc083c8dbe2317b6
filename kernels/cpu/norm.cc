// RMSNorm and LayerNorm in f32 with fixed-order 8-lane sums (so a token's result does not
// depend on the batch), in the operation order of Hugging Face's modules.
#include "kernels/cpu/norm.h"

#include <cmath>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu {
namespace {

// Parallelise over tokens only when there is enough work to pay for waking the team.
constexpr int64_t kNormParallelElements = 1 << 15;

// Sum of x[0, n), one 8-lane accumulator in order, fixed HSum, then the tail.
float Sum(const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
  float s = simd::HSum(acc);
  for (; i < n; ++i) s += x[i];
  return s;
}

// Sum of (x - c)², same order as Sum.
float SumSquaredDeviation(const float* x, int64_t n, float c) {
  const __m256 cv = _mm256_set1_ps(c);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), cv);
    acc = _mm256_fmadd_ps(d, d, acc);
  }
  float s = simd::HSum(acc);
  for (; i < n; ++i) s = std::fma(x[i] - c, x[i] - c, s);
  return s;
}

// out = ((x - shift) * scale) * gain (+ bias), element by element; out may alias x.
template <DType kG, DType kB>
void Normalize(const float* x, int64_t dim, float shift, float scale, const void* gain,
               const void* bias, float* out) {
  const __m256 sh = _mm256_set1_ps(shift);
  const __m256 sc = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh), sc),
                             simd::Load8<kG>(gain, i));
    if (bias != nullptr) v = _mm256_add_ps(v, simd::Load8<kB>(bias, i));
    _mm256_storeu_ps(out + i, v);
  }
  for (; i < dim; ++i) {
    float v = ((x[i] - shift) * scale) * simd::Load1<kG>(gain, i);
    if (bias != nullptr) v += simd::Load1<kB>(bias, i);
    out[i] = v;
  }
}

using NormalizeFn = void (*)(const float*, int64_t, float, float, const void*, const void*, float*);

template <DType kG>
NormalizeFn PickNormalize(DType b) {
  switch (b) {
    case DType::kF32:
      return &Normalize<kG, DType::kF32>;
    case DType::kBF16:
      return &Normalize<kG, DType::kBF16>;
    case DType::kF16:
      return &Normalize<kG, DType::kF16>;
  }
  return nullptr;
}

NormalizeFn PickNormalize(DType g, DType b) {
  switch (g) {
    case DType::kF32:
      return PickNormalize<DType::kF32>(b);
    case DType::kBF16:
      return PickNormalize<DType::kBF16>(b);
    case DType::kF16:
      return PickNormalize<DType::kF16>(b);
  }
  return nullptr;
}

}  // namespace

void RmsNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain, float eps,
             float* out) {
  SPANSERVE_CHECK_EQ(gain.size, dim);
  const NormalizeFn normalize = PickNormalize(gain.dtype, DType::kF32);
  ParallelRows(tokens, dim, kNormParallelElements, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xt = x + t * dim;
      const float mean_square = SumSquaredDeviation(xt, dim, 0.0f) / static_cast<float>(dim);
      const float inv_rms = 1.0f / std::sqrt(mean_square + eps);
      normalize(xt, dim, 0.0f, inv_rms, gain.data, nullptr, out + t * dim);
    }
  });
}

void LayerNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain,
               const WeightVector* bias, float eps, float* out) {
  SPANSERVE_CHECK_EQ(gain.size, dim);
  if (bias != nullptr) SPANSERVE_CHECK_EQ(bias->size, dim);
  const NormalizeFn normalize =
      PickNormalize(gain.dtype, bias != nullptr ? bias->dtype : DType::kF32);
  const void* bias_data = bias != nullptr ? bias->data : nullptr;
  ParallelRows(tokens, dim, kNormParallelElements, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xt = x + t * dim;
      const float mean = Sum(xt, dim) / static_cast<float>(dim);
      const float var = SumSquaredDeviation(xt, dim, mean) / static_cast<float>(dim);
      const float inv_std = 1.0f / std::sqrt(var + eps);
      normalize(xt, dim, mean, inv_std, gain.data, bias_data, out + t * dim);
    }
  });
}

}  // namespace spanserve::kernels::cpu
