#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::RandomFloats;

TEST(Rope, TablesMatchDoubleFormulaWithinF32AngleRounding) {
  const int64_t positions = 4096, head_dim = 64;
  const int64_t half = head_dim / 2;
  for (double factor : {1.0, 4.0}) {
    SCOPED_TRACE(::testing::Message() << "linear_factor=" << factor);
    std::vector<float> cos_t(positions * half), sin_t(positions * half);
    RopeTables(positions, head_dim, /*theta=*/1e6, factor, cos_t.data(), sin_t.data());
    for (int64_t pos = 0; pos < positions; ++pos) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos / factor * std::pow(1e6, -2.0 * i / head_dim);
        // f32 rounding of inv_freq and of the angle shifts it by a few ulps of the angle.
        const double tol = 4e-7 * angle + 2e-7;
        ASSERT_NEAR(cos_t[pos * half + i], std::cos(angle), tol) << pos << "," << i;
        ASSERT_NEAR(sin_t[pos * half + i], std::sin(angle), tol) << pos << "," << i;
      }
    }
  }
}

TEST(Rope, TablesFollowTransformersF32Steps) {
  // transformers: inv_freq = 1.0 / (base ** (arange(0, d, 2).float() / d)) in f32, then
  // freqs = inv_freq * position in f32; at pos 1 the angle is exactly inv_freq.
  const int64_t head_dim = 6;
  std::vector<float> cos_t(2 * 3), sin_t(2 * 3);
  RopeTables(2, head_dim, /*theta=*/10000.0, /*linear_factor=*/1.0, cos_t.data(), sin_t.data());
  for (int64_t i = 0; i < 3; ++i) {
    const float exponent = static_cast<float>(2 * i) / 6.0f;
    const float inv_freq = 1.0f / static_cast<float>(std::pow(10000.0, double{exponent}));
    EXPECT_EQ(cos_t[i], 1.0f);
    EXPECT_EQ(sin_t[i], 0.0f);
    EXPECT_EQ(cos_t[3 + i], static_cast<float>(std::cos(double{inv_freq})));
    EXPECT_EQ(sin_t[3 + i], static_cast<float>(std::sin(double{inv_freq})));
  }
}

TEST(Rope, ApplyRotatesHalvesAsRotateHalf) {
  const int64_t tokens = 4, heads = 3, head_dim = 10, max_pos = 50;
  const int64_t half = head_dim / 2;
  std::vector<float> cos_t(max_pos * half), sin_t(max_pos * half);
  RopeTables(max_pos, head_dim, 10000.0, 1.0, cos_t.data(), sin_t.data());
  const std::vector<float> x = RandomFloats(tokens * heads * head_dim, 81);
  const int32_t positions[tokens] = {0, 17, 3, 49};
  std::vector<float> y = x;
  ApplyRope(y.data(), tokens, heads, head_dim, positions, cos_t.data(), sin_t.data());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* in = x.data() + (t * heads + h) * head_dim;
      const float* out = y.data() + (t * heads + h) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) {
        // Naive: out = x·cos(θ) + rotate_half(x)·sin(θ), rotate_half(x) = [-x2, x1].
        const double theta = positions[t] * std::pow(10000.0, -2.0 * (i % half) / head_dim);
        const double rotated = i < half ? -double{in[i + half]} : double{in[i - half]};
        const double want = in[i] * std::cos(theta) + rotated * std::sin(theta);
        ASSERT_NEAR(out[i], want, 1e-5) << t << "," << h << "," << i;
      }
    }
  }
}

}  // namespace
}  // namespace spanserve::kernels::cpu
