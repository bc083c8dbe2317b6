#include "kernels/cpu/norm.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::BitIdentical;
using testing::RandomFloats;
using testing::StoredWeights;
using testing::StoreWeights;

class NormTest : public ::testing::TestWithParam<DType> {};

TEST_P(NormTest, RmsNormMatchesDoubleReference) {
  for (int64_t dim : {1, 7, 67, 896}) {
    SCOPED_TRACE(::testing::Message() << "dim=" << dim);
    const int64_t tokens = 5;
    // An offset makes the mean square differ clearly from the variance.
    const std::vector<float> x = RandomFloats(tokens * dim, 41, -0.5f, 2.0f);
    const StoredWeights gain = StoreWeights(RandomFloats(dim, 42, 0.5f, 1.5f), GetParam());
    const float eps = 1e-6f;
    std::vector<float> out(tokens * dim);
    RmsNorm(x.data(), tokens, dim, gain.Vector(), eps, out.data());
    for (int64_t t = 0; t < tokens; ++t) {
      double ms = 0;
      for (int64_t i = 0; i < dim; ++i) ms += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
      const double inv = 1.0 / std::sqrt(ms / dim + eps);
      for (int64_t i = 0; i < dim; ++i) {
        const double want = x[t * dim + i] * inv * gain.widened[i];
        ASSERT_NEAR(out[t * dim + i], want, 1e-5 * std::fabs(want) + 1e-7) << t << "," << i;
      }
    }
  }
}

TEST_P(NormTest, LayerNormMatchesDoubleReference) {
  for (bool with_bias : {false, true}) {
    for (int64_t dim : {1, 7, 67, 896}) {
      SCOPED_TRACE(::testing::Message() << "dim=" << dim << " bias=" << with_bias);
      const int64_t tokens = 4;
      const std::vector<float> x = RandomFloats(tokens * dim, 51, 3.0f, 5.0f);
      const StoredWeights gain = StoreWeights(RandomFloats(dim, 52, 0.5f, 1.5f), GetParam());
      const StoredWeights bias = StoreWeights(RandomFloats(dim, 53), GetParam());
      const WeightVector bias_view = bias.Vector();
      const float eps = 1e-5f;
      std::vector<float> out(tokens * dim);
      LayerNorm(x.data(), tokens, dim, gain.Vector(), with_bias ? &bias_view : nullptr, eps,
                out.data());
      for (int64_t t = 0; t < tokens; ++t) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < dim; ++i) mean += x[t * dim + i];
        mean /= dim;
        for (int64_t i = 0; i < dim; ++i) var += (x[t * dim + i] - mean) * (x[t * dim + i] - mean);
        var /= dim;  // biased, as torch.nn.LayerNorm
        const double inv = 1.0 / std::sqrt(var + eps);
        for (int64_t i = 0; i < dim; ++i) {
          const double want =
              (x[t * dim + i] - mean) * inv * gain.widened[i] + (with_bias ? bias.widened[i] : 0.0);
          // x sits at 4 ± 1: cancellation in x - mean costs up to ~4/σ ulps of the result.
          ASSERT_NEAR(out[t * dim + i], want, 1e-5 * (std::fabs(want) + 1.0)) << t << "," << i;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, NormTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         testing::DTypeParamName);

TEST(Norm, InPlaceEqualsOutOfPlace) {
  const int64_t tokens = 3, dim = 45;
  const std::vector<float> x = RandomFloats(tokens * dim, 61);
  const StoredWeights gain = StoreWeights(RandomFloats(dim, 62), DType::kF32);
  std::vector<float> out(tokens * dim);
  std::vector<float> in_place = x;
  RmsNorm(x.data(), tokens, dim, gain.Vector(), 1e-6f, out.data());
  RmsNorm(in_place.data(), tokens, dim, gain.Vector(), 1e-6f, in_place.data());
  EXPECT_TRUE(BitIdentical(out.data(), in_place.data(), tokens * dim));
  in_place = x;
  LayerNorm(x.data(), tokens, dim, gain.Vector(), nullptr, 1e-5f, out.data());
  LayerNorm(in_place.data(), tokens, dim, gain.Vector(), nullptr, 1e-5f, in_place.data());
  EXPECT_TRUE(BitIdentical(out.data(), in_place.data(), tokens * dim));
}

TEST(Norm, TokenResultDoesNotDependOnBatch) {
  const int64_t tokens = 300, dim = 131;  // enough work to take the parallel path
  const std::vector<float> x = RandomFloats(tokens * dim, 71);
  const StoredWeights gain = StoreWeights(RandomFloats(dim, 72), DType::kBF16);
  std::vector<float> batch(tokens * dim), alone(dim);
  RmsNorm(x.data(), tokens, dim, gain.Vector(), 1e-6f, batch.data());
  RmsNorm(x.data() + 217 * dim, 1, dim, gain.Vector(), 1e-6f, alone.data());
  EXPECT_TRUE(BitIdentical(batch.data() + 217 * dim, alone.data(), dim));
}

}  // namespace
}  // namespace spanserve::kernels::cpu
