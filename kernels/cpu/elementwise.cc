// Element-wise and row-wise kernels. An element's result never depends on its index: tails
// go through the same vector code (padded), so a token's output is the same whatever batch
// it is flattened into.
#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <limits>

#include "common/thread_pool.h"
#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu {
namespace {

// Applies f (an __m256 → __m256 map) to x[0, n) into out[0, n); the last partial vector
// runs through a padded copy so every element sees the same instructions.
template <typename F>
void Map(const float* x, int64_t n, float* out, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, f(_mm256_loadu_ps(x + i)));
  if (i < n) {
    alignas(32) float buf[8] = {};
    for (int64_t j = i; j < n; ++j) buf[j - i] = x[j];
    _mm256_store_ps(buf, f(_mm256_load_ps(buf)));
    for (int64_t j = i; j < n; ++j) out[j] = buf[j - i];
  }
}

// Same as Map for two inputs.
template <typename F>
void Map2(const float* a, const float* b, int64_t n, float* out, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, f(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  }
  if (i < n) {
    alignas(32) float ba[8] = {};
    alignas(32) float bb[8] = {};
    for (int64_t j = i; j < n; ++j) {
      ba[j - i] = a[j];
      bb[j - i] = b[j];
    }
    _mm256_store_ps(ba, f(_mm256_load_ps(ba), _mm256_load_ps(bb)));
    for (int64_t j = i; j < n; ++j) out[j] = ba[j - i];
  }
}

float RowMax(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// Writes e[i] = exp(x[i] - max) (e may alias x) and returns their sum in a fixed order.
float ExpShifted(const float* x, int64_t n, float max, float* e) {
  const __m256 mv = _mm256_set1_ps(max);
  Map(x, n, e, [mv](__m256 v) { return simd::Exp(_mm256_sub_ps(v, mv)); });
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(e + i));
  float s = simd::HSum(acc);
  for (; i < n; ++i) s += e[i];
  return s;
}

// Rows are independent; spread them over threads only when there is enough of them.
constexpr int64_t kElementwiseParallelElements = 1 << 16;

}  // namespace

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  // silu(g) = g / (1 + e^-g), PyTorch's formula.
  Map2(gate, up, n, out, [=](__m256 g, __m256 u) {
    const __m256 e = simd::Exp(_mm256_xor_ps(g, sign));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
  });
}

void GeluTanhMul(const float* gate, const float* up, int64_t n, float* out) {
  // PyTorch's gelu(approximate='tanh') in f32: kBeta = M_SQRT2 * M_2_SQRTPI * 0.5 (in double,
  // then f32), kKappa = 0.044715; 0.5 * x * (1 + tanh(kBeta * (x + kKappa * x_cube))).
  constexpr float kBeta = static_cast<float>(1.41421356237309504880 * 1.12837916709551257390 * 0.5);
  constexpr float kKappa = 0.044715f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = gate[i];
    const float x_cube = x * x * x;
    const float inner = kBeta * (x + kKappa * x_cube);
    out[i] = (0.5f * x * (1.0f + std::tanh(inner))) * up[i];
  }
}

void SoftCap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i] / cap) * cap;
}

void Axpby(float a, const float* x, float b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + b * y[i];
}

void Add(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void Softmax(float* x, int64_t rows, int64_t cols) {
  ParallelRows(rows, cols, kElementwiseParallelElements, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = x + r * cols;
      const float sum = ExpShifted(row, cols, RowMax(row, cols), row);
      for (int64_t i = 0; i < cols; ++i) row[i] /= sum;
    }
  });
}

void LogSoftmax(float* x, int64_t rows, int64_t cols) {
  // The exponentials are summed, not stored: x must survive until the shift is known.
  ParallelRows(rows, cols, kElementwiseParallelElements, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = x + r * cols;
      const float max = RowMax(row, cols);
      const __m256 mv = _mm256_set1_ps(max);
      __m256 acc = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= cols; i += 8) {
        acc = _mm256_add_ps(acc, simd::Exp(_mm256_sub_ps(_mm256_loadu_ps(row + i), mv)));
      }
      float sum = simd::HSum(acc);
      if (i < cols) {
        alignas(32) float tail[8] = {};
        Map(row + i, cols - i, tail, [mv](__m256 v) { return simd::Exp(_mm256_sub_ps(v, mv)); });
        for (int64_t j = 0; j < cols - i; ++j) sum += tail[j];
      }
      const float shift = max + std::log(sum);
      for (int64_t j = 0; j < cols; ++j) row[j] -= shift;
    }
  });
}

int64_t ArgMax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

}  // namespace spanserve::kernels::cpu
