#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
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
    const RopeScaling scaling{
        .type = factor == 1.0 ? RopeScalingType::kNone : RopeScalingType::kLinear,
        .factor = factor};
    RopeTables(positions, head_dim, /*theta=*/1e6, scaling, cos_t.data(), sin_t.data());
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
  RopeTables(2, head_dim, /*theta=*/10000.0, RopeScaling{}, cos_t.data(), sin_t.data());
  for (int64_t i = 0; i < 3; ++i) {
    const float exponent = static_cast<float>(2 * i) / 6.0f;
    const float inv_freq = 1.0f / static_cast<float>(std::pow(10000.0, double{exponent}));
    EXPECT_EQ(cos_t[i], 1.0f);
    EXPECT_EQ(sin_t[i], 0.0f);
    EXPECT_EQ(cos_t[3 + i], static_cast<float>(std::cos(double{inv_freq})));
    EXPECT_EQ(sin_t[3 + i], static_cast<float>(std::sin(double{inv_freq})));
  }
}

// inv_freq of transformers 4.46.3's ROPE_INIT_FUNCTIONS["llama3"] / ["yarn"] (torch 1.13, f32
// on CPU), printed with float.hex(): the scaled frequencies follow its f32 steps bit for bit.
const std::vector<float> kLlama3Small = {
    0x1.26f0dcp-1f,  0x1.211134p-3f,  0x1.43d136p-5f,  0x1.6c310ep-6f,
    0x1.99999ap-7f,  0x1.ccab84p-8f,  0x1.030dc6p-8f,  0x1.235a72p-9f,
    0x1.47ae14p-10f, 0x1.708938p-11f, 0x1.9e7c70p-12f, 0x1.d22a50p-13f,
    0x1.0624dep-13f, 0x1.26d42cp-14f, 0x1.4b96c0p-15f, 0x1.74eea6p-16f};
const std::vector<float> kLlama31 = {
    0x1.000000p+0f,  0x1.a11582p-1f,  0x1.53c38cp-1f,  0x1.14c708p-1f,  0x1.c2ef78p-2f,
    0x1.6f56fap-2f,  0x1.2b3dc6p-2f,  0x1.e788c2p-3f,  0x1.8d2760p-3f,  0x1.438740p-3f,
    0x1.078d40p-3f,  0x1.ad6338p-4f,  0x1.5dc95ap-4f,  0x1.1cf130p-4f,  0x1.d03ccep-5f,
    0x1.7a2d08p-5f,  0x1.341190p-5f,  0x1.f5ea7ep-6f,  0x1.98de92p-6f,  0x1.4d1272p-6f,
    0x1.0f5386p-6f,  0x1.ba0dd8p-7f,  0x1.681adap-7f,  0x1.2558fep-7f,  0x1.ddee9ep-8f,
    0x1.8554ecp-8f,  0x1.3d2804p-8f,  0x1.025c6ap-8f,  0x1.a4ee40p-9f,  0x1.1bfa0cp-9f,
    0x1.67a23ap-10f, 0x1.c12f3cp-11f, 0x1.132ba4p-11f, 0x1.47e210p-12f, 0x1.765ba4p-13f,
    0x1.90d10cp-14f, 0x1.46831ap-14f, 0x1.09fb7ep-14f, 0x1.b15902p-15f, 0x1.610332p-15f,
    0x1.1f91f0p-15f, 0x1.d484dep-16f, 0x1.7da9e8p-16f, 0x1.36e8eap-16f, 0x1.fa8b86p-17f,
    0x1.9ca3eap-17f, 0x1.5024d6p-17f, 0x1.11d41ep-17f, 0x1.be2188p-18f, 0x1.6b6d0ep-18f,
    0x1.280d96p-18f, 0x1.e25700p-19f, 0x1.88ec20p-19f, 0x1.4014d2p-19f, 0x1.04be68p-19f,
    0x1.a8d010p-20f, 0x1.5a0f4ep-20f, 0x1.19e800p-20f, 0x1.cb4a9ap-21f, 0x1.76258ep-21f,
    0x1.30c94ep-21f, 0x1.f09184p-22f, 0x1.948360p-22f, 0x1.4985fep-22f};
const std::vector<float> kYarnSmall = {
    0x1.000000p+0f,  0x1.011200p-1f,  0x1.fcdb0ep-3f,  0x1.ee4292p-4f,
    0x1.d41d40p-5f,  0x1.abc3d4p-6f,  0x1.7213acp-7f,  0x1.235a72p-8f,
    0x1.47ae14p-9f,  0x1.708938p-10f, 0x1.9e7c70p-11f, 0x1.d22a50p-12f,
    0x1.0624dep-12f, 0x1.26d42cp-13f, 0x1.4b96c0p-14f, 0x1.74eea6p-15f};
const std::vector<float> kYarnQwen25 = {
    0x1.000000p+0f,  0x1.9c975ap-1f,  0x1.4c7bc0p-1f,  0x1.0beddep-1f,  0x1.afd136p-2f,
    0x1.5bf9fep-2f,  0x1.186a08p-2f,  0x1.c3f06ap-3f,  0x1.6c310ep-3f,  0x1.257b22p-3f,
    0x1.d8ffacp-4f,  0x1.7d298cp-4f,  0x1.33281ap-4f,  0x1.ef0a26p-5f,  0x1.8eec7ep-5f,
    0x1.41783ap-5f,  0x1.030dc6p-5f,  0x1.a18350p-6f,  0x1.507316p-6f,  0x1.0f2010p-6f,
    0x1.b4f7e4p-7f,  0x1.6020a4p-7f,  0x1.1bc25ap-7f,  0x1.c9548cp-8f,  0x1.6046eep-8f,
    0x1.0ec710p-8f,  0x1.9f4aa0p-9f,  0x1.3da490p-9f,  0x1.e483bep-10f, 0x1.705780p-10f,
    0x1.17040ep-10f, 0x1.a4fb70p-11f, 0x1.3c1d64p-11f, 0x1.d832d0p-12f, 0x1.5e7a04p-12f,
    0x1.02387cp-12f, 0x1.79277cp-13f, 0x1.107c70p-13f, 0x1.847d34p-14f, 0x1.103a14p-14f,
    0x1.74eea6p-15f, 0x1.2c8648p-15f, 0x1.e459c4p-16f, 0x1.864f6ap-16f, 0x1.3a8748p-16f,
    0x1.faeba8p-17f, 0x1.987f7cp-17f, 0x1.492f56p-17f, 0x1.094564p-17f, 0x1.ab8882p-18f,
    0x1.58863ap-18f, 0x1.15a1dap-18f, 0x1.bf749ep-19f, 0x1.68941cp-19f, 0x1.2291c6p-19f,
    0x1.d44e64p-20f, 0x1.796182p-20f, 0x1.301c04p-20f, 0x1.ea20e0p-21f, 0x1.8af756p-21f,
    0x1.3e47c8p-21f, 0x1.007bd8p-21f, 0x1.9d5ef2p-22f, 0x1.4d1c98p-22f};
const std::vector<float> kYarnBetas = {
    0x1.000000p+0f,  0x1.7ff222p-1f,  0x1.1feb34p-1f,  0x1.7fd668p-2f,  0x1.f7b736p-3f,
    0x1.43c584p-3f,  0x1.94a848p-4f,  0x1.e58534p-5f,  0x1.111112p-5f,  0x1.998acep-6f,
    0x1.331d04p-6f,  0x1.cc9ae2p-7f,  0x1.5967b0p-7f,  0x1.03046ap-7f,  0x1.847898p-8f,
    0x1.234fecp-8f,  0x1.b4e81cp-9f,  0x1.47a240p-9f,  0x1.eb61a0p-10f, 0x1.707beap-10f,
    0x1.1452f6p-10f, 0x1.9e6d78p-11f, 0x1.36c6e0p-11f, 0x1.d2197ap-12f, 0x1.5d867cp-12f,
    0x1.061b66p-12f, 0x1.891ae6p-13f, 0x1.26c988p-13f, 0x1.ba1e54p-14f, 0x1.4b8ac6p-14f,
    0x1.f13e36p-15f, 0x1.74e12ep-15f};

TEST(Rope, ScaledInvFreqEqualsTransformersBitForBit) {
  struct Case {
    const char* name;
    int64_t head_dim;
    double theta;
    RopeScaling scaling;
    const std::vector<float>* want;
    // torch's f32 pow (Sleef, within 1 ulp) and the runtime's correctly rounded one disagree
    // by 1 ulp on theta^(74/128) for theta 1e6 (i = 37): a difference of the unscaled
    // frequencies too, carried through the scaling.
    int max_ulps = 0;
  };
  const RopeScaling llama3_small{.type = RopeScalingType::kLlama3,
                                 .factor = 8.0,
                                 .low_freq_factor = 1.0,
                                 .high_freq_factor = 4.0,
                                 .context_length = 16};
  RopeScaling llama31 = llama3_small;
  llama31.context_length = 8192;
  // yarn: the correction range uses max_position_embeddings (256, 32768, 100 above).
  const RopeScaling yarn_small{
      .type = RopeScalingType::kYarn, .factor = 4.0, .context_length = 256};
  RopeScaling yarn_qwen = yarn_small;
  yarn_qwen.context_length = 32768;
  const RopeScaling yarn_betas{.type = RopeScalingType::kYarn,
                               .factor = 3.0,
                               .context_length = 100,
                               .beta_fast = 8.0,
                               .beta_slow = 2.0};
  for (const Case& cs : {Case{"llama3 small", 32, 10000.0, llama3_small, &kLlama3Small},
                         Case{"llama3.1", 128, 500000.0, llama31, &kLlama31},
                         Case{"yarn small", 32, 10000.0, yarn_small, &kYarnSmall},
                         Case{"yarn qwen2.5", 128, 1e6, yarn_qwen, &kYarnQwen25, 1},
                         Case{"yarn betas", 64, 10000.0, yarn_betas, &kYarnBetas}}) {
    SCOPED_TRACE(cs.name);
    std::vector<float> got(cs.head_dim / 2);
    RopeInvFreq(cs.head_dim, cs.theta, cs.scaling, got.data());
    ASSERT_EQ(got.size(), cs.want->size());
    for (size_t i = 0; i < got.size(); ++i) {
      int32_t a, b;
      std::memcpy(&a, &got[i], 4);
      std::memcpy(&b, &(*cs.want)[i], 4);
      EXPECT_LE(std::abs(a - b), cs.max_ulps)
          << "i=" << i << ": " << got[i] << " vs " << (*cs.want)[i];
    }
  }
}

TEST(Rope, YarnAttentionFactorScalesCosAndSinInF32) {
  const int64_t head_dim = 8, half = 4, positions = 3;
  const double attention = 0.1 * std::log(4.0) + 1.0;
  const RopeScaling yarn{.type = RopeScalingType::kYarn,
                         .factor = 4.0,
                         .context_length = 64,
                         .attention_factor = attention};
  std::vector<float> cos_t(positions * half), sin_t(positions * half);
  RopeTables(positions, head_dim, 10000.0, yarn, cos_t.data(), sin_t.data());
  std::vector<float> inv(half);
  RopeInvFreq(head_dim, 10000.0, yarn, inv.data());
  const float att = static_cast<float>(attention);
  for (int64_t pos = 0; pos < positions; ++pos) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<float>(pos) * inv[i];
      EXPECT_EQ(cos_t[pos * half + i], static_cast<float>(std::cos(angle)) * att);
      EXPECT_EQ(sin_t[pos * half + i], static_cast<float>(std::sin(angle)) * att);
    }
  }
}

TEST(Rope, FreqDivisorsDivideInvFreq) {
  const int64_t head_dim = 8;
  const std::vector<float> divisors = {1.0f, 2.0f, 3.0f, 8.0f};
  const RopeScaling by_divisors{.type = RopeScalingType::kFreqDivisors,
                                .freq_divisors = divisors.data()};
  std::vector<float> plain(4), got(4);
  RopeInvFreq(head_dim, 10000.0, RopeScaling{}, plain.data());
  RopeInvFreq(head_dim, 10000.0, by_divisors, got.data());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], plain[i] / divisors[i]);
}

// Dynamic NTK: theta' = theta · ((factor · L / ctx) − (factor − 1))^(d / (d − 2)) for a
// sequence length L past ctx (max_position_embeddings), theta up to it.
double DynamicInvFreqDouble(int64_t i, int64_t head_dim, double theta, double factor, double ctx,
                            double length) {
  const double d = static_cast<double>(head_dim);
  const double base =
      length > ctx ? theta * std::pow(factor * length / ctx - (factor - 1), d / (d - 2)) : theta;
  return std::pow(base, -2.0 * static_cast<double>(i) / d);
}

TEST(Rope, DynamicInvFreqFollowsTheFormula) {
  struct Case {
    int64_t head_dim;
    double theta, factor;
    int64_t context;
  };
  for (const Case& cs : {Case{16, 10000.0, 4.0, 32}, Case{128, 500000.0, 2.0, 4096},
                         Case{64, 1e6, 8.0, 2048}, Case{10, 10000.0, 1.5, 100}}) {
    const int64_t half = cs.head_dim / 2;
    std::vector<float> unscaled(half), got(half);
    RopeInvFreq(cs.head_dim, cs.theta, RopeScaling{}, unscaled.data());
    for (const int64_t length : {int64_t{1}, cs.context - 5, cs.context, cs.context + 1,
                                 cs.context + 13, 2 * cs.context, 4 * cs.context - 1}) {
      SCOPED_TRACE(::testing::Message() << "head_dim " << cs.head_dim << " L " << length);
      const RopeScaling dynamic{.type = RopeScalingType::kDynamic,
                                .factor = cs.factor,
                                .context_length = static_cast<double>(cs.context),
                                .dynamic_length = length};
      RopeInvFreq(cs.head_dim, cs.theta, dynamic, got.data());
      for (int64_t i = 0; i < half; ++i) {
        if (length <= cs.context) {
          // Not scaled: the unscaled frequencies bit for bit.
          ASSERT_EQ(got[i], unscaled[i]) << "i=" << i;
          continue;
        }
        const double want =
            DynamicInvFreqDouble(i, cs.head_dim, cs.theta, cs.factor,
                                 static_cast<double>(cs.context), static_cast<double>(length));
        // f32 steps on the base (a few ulps), raised to at most the power 1.
        ASSERT_NEAR(got[i], want, 2e-6 * want) << "i=" << i;
        if (i > 0) {
          ASSERT_LT(got[i], unscaled[i]) << "i=" << i;  // scaled: lower frequencies
        }
      }
    }
  }
}

// transformers 4.46.3's _compute_dynamic_ntk_parameters(seq_len=max(position_ids) + 1) for
// head_dim 16, theta 1e4, factor 4, max_position_embeddings 32 (torch 1.13, f32 on CPU;
// half = 8 frequencies take torch's scalar pow), printed with float.hex().
const std::vector<float> kDynamic45 = {0x1.000000p+0f,  0x1.1a1d22p-2f, 0x1.36e434p-4f,
                                       0x1.569ac4p-6f,  0x1.798d78p-8f, 0x1.a010cep-10f,
                                       0x1.ca81dcp-12f, 0x1.f9473cp-14f};
const std::vector<float> kDynamic60 = {0x1.000000p+0f,  0x1.0534dap-2f, 0x1.0a84cep-4f,
                                       0x1.0ff06cp-6f,  0x1.157842p-8f, 0x1.1b1ce2p-10f,
                                       0x1.20dee4p-12f, 0x1.26bee2p-14f};

TEST(Rope, DynamicInvFreqEqualsTransformersBitForBit) {
  for (const auto& [length, want] : {std::pair{45, &kDynamic45}, std::pair{60, &kDynamic60}}) {
    SCOPED_TRACE(length);
    const RopeScaling dynamic{.type = RopeScalingType::kDynamic,
                              .factor = 4.0,
                              .context_length = 32,
                              .dynamic_length = length};
    std::vector<float> got(8);
    RopeInvFreq(16, 10000.0, dynamic, got.data());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], (*want)[i]) << "i=" << i;
  }
}

TEST(Rope, DynamicTablesRotateEachRowForItsLength) {
  // Without dynamic_length, row p is rotated for the length max(p + 1, ctx) (a decoded
  // token); with it, every row for that length (a prompt token); first_position slices.
  const int64_t head_dim = 16, half = 8, context = 32, rows = 100;
  const RopeScaling decode{.type = RopeScalingType::kDynamic, .factor = 4.0, .context_length = 32};
  std::vector<float> cos_t(rows * half), sin_t(rows * half), inv(half);
  RopeTables(rows, head_dim, 10000.0, decode, cos_t.data(), sin_t.data());
  auto expect_row = [&](const float* c, const float* s, int64_t pos, int64_t length) {
    RopeScaling at = decode;
    at.dynamic_length = length;
    RopeInvFreq(head_dim, 10000.0, at, inv.data());
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<float>(pos) * inv[i];
      ASSERT_EQ(c[i], static_cast<float>(std::cos(angle))) << pos << "," << i;
      ASSERT_EQ(s[i], static_cast<float>(std::sin(angle))) << pos << "," << i;
    }
  };
  for (int64_t pos = 0; pos < rows; ++pos) {
    expect_row(&cos_t[pos * half], &sin_t[pos * half], pos, std::max(pos + 1, context));
  }
  // Rows 40.. of the prompt of a 90-token forward.
  RopeScaling prompt = decode;
  prompt.dynamic_length = 90;
  prompt.first_position = 40;
  std::vector<float> pc(50 * half), ps(50 * half);
  RopeTables(50, head_dim, 10000.0, prompt, pc.data(), ps.data());
  for (int64_t r = 0; r < 50; ++r) expect_row(&pc[r * half], &ps[r * half], 40 + r, 90);
  // The last prompt token's row is the decode row of its position.
  for (int64_t i = 0; i < half; ++i) EXPECT_EQ(pc[49 * half + i], cos_t[89 * half + i]);
  // A slice of the decode table equals the same rows of the whole table.
  RopeScaling slice = decode;
  slice.first_position = 30;
  std::vector<float> sc(10 * half), ss(10 * half);
  RopeTables(10, head_dim, 10000.0, slice, sc.data(), ss.data());
  for (int64_t k = 0; k < 10 * half; ++k) {
    EXPECT_EQ(sc[k], cos_t[30 * half + k]);
    EXPECT_EQ(ss[k], sin_t[30 * half + k]);
  }
}

// LongRoPE: 1 / (ext[i] · theta^(2i/d)) in f32, ext the short factors up to the context
// and the long ones past it; each decode row switches at position context (length
// context + 1), the prompt rows of a longer forward take the long ones throughout; cos and
// sin times the attention factor.
TEST(Rope, LongRopeTablesSwitchFactorsPastTheContext) {
  const int64_t head_dim = 16, half = 8, context = 32, rows = 60;
  const std::vector<float> short_factor = {1.0f, 1.05f, 1.12f, 1.25f, 1.4f, 1.6f, 1.85f, 2.1f};
  const std::vector<float> long_factor = {1.0f, 1.3f, 1.9f, 2.8f, 4.1f, 6.0f, 9.5f, 14.0f};
  const double attention = std::sqrt(1 + std::log(4.0) / std::log(32.0));
  const RopeScaling decode{.type = RopeScalingType::kLongRope,
                           .context_length = static_cast<double>(context),
                           .attention_factor = attention,
                           .short_factor = short_factor.data(),
                           .long_factor = long_factor.data()};
  std::vector<float> unscaled(half), inv_short(half), inv_long(half);
  RopeInvFreq(head_dim, 10000.0, RopeScaling{}, unscaled.data());
  RopeScaling at = decode;
  at.dynamic_length = context;
  RopeInvFreq(head_dim, 10000.0, at, inv_short.data());
  at.dynamic_length = context + 1;
  RopeInvFreq(head_dim, 10000.0, at, inv_long.data());
  for (int64_t i = 0; i < half; ++i) {
    // theta ** (arange(0, d, 2).float() / d) in f32, as the unscaled frequencies use it.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(10000.0, static_cast<double>(exponent)));
    EXPECT_EQ(unscaled[i], 1.0f / power) << i;
    EXPECT_EQ(inv_short[i], 1.0f / (short_factor[i] * power)) << i;
    EXPECT_EQ(inv_long[i], 1.0f / (long_factor[i] * power)) << i;
  }
  std::vector<float> cos_t(rows * half), sin_t(rows * half);
  RopeTables(rows, head_dim, 10000.0, decode, cos_t.data(), sin_t.data());
  const float scale = static_cast<float>(attention);
  auto expect_row = [&](const float* c, const float* s, int64_t pos, const float* inv) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv[i];
      ASSERT_EQ(c[i], static_cast<float>(std::cos(static_cast<double>(angle))) * scale)
          << pos << "," << i;
      ASSERT_EQ(s[i], static_cast<float>(std::sin(static_cast<double>(angle))) * scale)
          << pos << "," << i;
    }
  };
  for (int64_t pos = 0; pos < rows; ++pos) {
    expect_row(&cos_t[pos * half], &sin_t[pos * half], pos,
               pos + 1 > context ? inv_long.data() : inv_short.data());
  }
  RopeScaling prompt = decode;
  prompt.dynamic_length = 45;
  prompt.first_position = 10;
  std::vector<float> pc(30 * half), ps(30 * half);
  RopeTables(30, head_dim, 10000.0, prompt, pc.data(), ps.data());
  for (int64_t r = 0; r < 30; ++r)
    expect_row(&pc[r * half], &ps[r * half], 10 + r, inv_long.data());
}

TEST(Rope, ApplyRotatesHalvesAsRotateHalf) {
  const int64_t tokens = 4, heads = 3, head_dim = 10, max_pos = 50;
  const int64_t half = head_dim / 2;
  std::vector<float> cos_t(max_pos * half), sin_t(max_pos * half);
  RopeTables(max_pos, head_dim, 10000.0, RopeScaling{}, cos_t.data(), sin_t.data());
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
