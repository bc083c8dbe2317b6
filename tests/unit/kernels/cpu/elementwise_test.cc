#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::BitIdentical;
using testing::RandomFloats;

TEST(Elementwise, SiluMulMatchesDoubleReference) {
  const int64_t n = 67;
  const std::vector<float> gate = RandomFloats(n, 91, -12.0f, 12.0f);
  const std::vector<float> up = RandomFloats(n, 92);
  std::vector<float> out(n);
  SiluMul(gate.data(), up.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double want = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_NEAR(out[i], want, 1e-6 * std::fabs(want) + 1e-30) << i;
  }
  // In place on gate; and saturation far out in both directions.
  std::vector<float> in_place = gate;
  SiluMul(in_place.data(), up.data(), n, in_place.data());
  EXPECT_TRUE(BitIdentical(in_place.data(), out.data(), n));
  const float big[3] = {-200.0f, 0.0f, 200.0f};
  const float ones[3] = {1.0f, 1.0f, 1.0f};
  float sat[3];
  SiluMul(big, ones, 3, sat);
  EXPECT_NEAR(sat[0], 0.0f, 1e-30);
  EXPECT_EQ(sat[1], 0.0f);
  EXPECT_EQ(sat[2], 200.0f);
}

TEST(Elementwise, SiluMulElementDoesNotDependOnOffset) {
  // A token's slice inside a flattened batch lands in the vector body or the tail.
  const int64_t n = 45;
  const std::vector<float> gate = RandomFloats(n, 93, -5.0f, 5.0f);
  const std::vector<float> up = RandomFloats(n, 94);
  std::vector<float> whole(n), part(n);
  SiluMul(gate.data(), up.data(), n, whole.data());
  SiluMul(gate.data() + 3, up.data() + 3, n - 3, part.data());
  EXPECT_TRUE(BitIdentical(whole.data() + 3, part.data(), n - 3));
}

TEST(Elementwise, GeluTanhMulMatchesDoubleReference) {
  const int64_t n = 67;
  const std::vector<float> gate = RandomFloats(n, 97, -6.0f, 6.0f);
  const std::vector<float> up = RandomFloats(n, 98);
  std::vector<float> out(n);
  GeluTanhMul(gate.data(), up.data(), n, out.data());
  const double beta = std::sqrt(2.0 / std::acos(-1.0));
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double t = std::tanh(beta * (g + 0.044715 * g * g * g));
    const double want = 0.5 * g * (1.0 + t) * up[i];
    // Relative to the terms: 1 + tanh cancels for g ≪ 0.
    ASSERT_NEAR(out[i], want, 1e-6 * 0.5 * std::fabs(g) * (1.0 + std::fabs(t)) * std::fabs(up[i]))
        << i;
  }
  std::vector<float> in_place = gate;
  GeluTanhMul(in_place.data(), up.data(), n, in_place.data());
  EXPECT_TRUE(BitIdentical(in_place.data(), out.data(), n));
  const float big[3] = {-30.0f, 0.0f, 30.0f};
  const float ones[3] = {1.0f, 1.0f, 1.0f};
  float sat[3];
  GeluTanhMul(big, ones, 3, sat);
  EXPECT_EQ(sat[0], -0.0f);
  EXPECT_EQ(sat[1], 0.0f);
  EXPECT_EQ(sat[2], 30.0f);
}

TEST(Elementwise, AxpbyAndAdd) {
  const int64_t n = 29;
  const std::vector<float> x = RandomFloats(n, 95);
  const std::vector<float> y0 = RandomFloats(n, 96);
  std::vector<float> y = y0;
  Axpby(0.5f, x.data(), -2.0f, y.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], 0.5f * x[i] + -2.0f * y0[i]) << i;
  y = y0;
  Add(x.data(), y.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], x[i] + y0[i]) << i;
}

TEST(Elementwise, SoftmaxAndLogSoftmaxMatchDoubleReference) {
  for (int64_t cols : {1, 7, 67, 1000}) {
    SCOPED_TRACE(::testing::Message() << "cols=" << cols);
    const int64_t rows = 3;
    // Logits near 100 overflow e^x in f32 unless the maximum is subtracted.
    const std::vector<float> x = RandomFloats(rows * cols, 97, 80.0f, 100.0f);
    std::vector<float> soft = x, log_soft = x;
    Softmax(soft.data(), rows, cols);
    LogSoftmax(log_soft.data(), rows, cols);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x.data() + r * cols;
      double max = row[0], sum = 0;
      for (int64_t i = 0; i < cols; ++i) max = std::max<double>(max, row[i]);
      for (int64_t i = 0; i < cols; ++i) sum += std::exp(row[i] - max);
      for (int64_t i = 0; i < cols; ++i) {
        const double p = std::exp(row[i] - max) / sum;
        const double lp = row[i] - max - std::log(sum);
        ASSERT_NEAR(soft[r * cols + i], p, 2e-6 * p + 1e-30) << r << "," << i;
        // x - shift with |x| ≈ 100 rounds to ~1e-5 absolute.
        ASSERT_NEAR(log_soft[r * cols + i], lp, 2e-5) << r << "," << i;
      }
    }
  }
}

TEST(Elementwise, ArgMaxTakesFirstOfTies) {
  const float x[7] = {1.0f, 3.0f, -2.0f, 3.0f, 0.0f, 2.9f, 3.0f};
  EXPECT_EQ(ArgMax(x, 7), 1);
  const float neg[3] = {-std::numeric_limits<float>::infinity(), -5.0f, -5.0f};
  EXPECT_EQ(ArgMax(neg, 3), 1);
  EXPECT_EQ(ArgMax(x, 1), 0);
}

}  // namespace
}  // namespace spanserve::kernels::cpu
