// RoPE tables and rotation with the roundings of transformers' LlamaRotaryEmbedding in f32.
#include "kernels/cpu/rope.h"

#include <cmath>

#include "common/check.h"

namespace spanserve::kernels::cpu {

void RopeTables(int64_t max_positions, int64_t head_dim, double theta, double linear_factor,
                float* cos_table, float* sin_table) {
  SPANSERVE_CHECK(head_dim > 0 && head_dim % 2 == 0);
  SPANSERVE_CHECK(linear_factor > 0.0);
  const int64_t half = head_dim / 2;
  const float factor = static_cast<float>(linear_factor);
  for (int64_t i = 0; i < half; ++i) {
    // transformers: arange(0, d, 2).float() / d in f32, base ** that (f32), 1.0 / that (f32).
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(theta, static_cast<double>(exponent)));
    const float inv_freq = 1.0f / power;
    for (int64_t pos = 0; pos < max_positions; ++pos) {
      const float angle = (static_cast<float>(pos) / factor) * inv_freq;
      // cos/sin of the f32 angle, correctly rounded to f32 (torch's f32 cos is within 1 ulp).
      cos_table[pos * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_table[pos * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

void ApplyRope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, const int32_t* positions,
               const float* cos_table, const float* sin_table) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos_table + static_cast<int64_t>(positions[t]) * half;
    const float* s = sin_table + static_cast<int64_t>(positions[t]) * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* x1 = x + (t * heads + h) * head_dim;
      float* x2 = x1 + half;
      // q·cos + rotate_half(q)·sin with a rounding after each product and the sum, as
      // PyTorch's separate mul/add kernels do (the library builds with -ffp-contract=off).
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i];
        const float b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

}  // namespace spanserve::kernels::cpu
