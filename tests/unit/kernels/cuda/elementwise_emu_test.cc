// The CUDA element-wise, norm, RoPE, row and mixture-of-experts kernels
// (kernels/cuda/elementwise.cu) on the CPU emulation, each against the CPU backend on the
// same random inputs: ragged sizes, every weight dtype, aliasing where the op allows it.
// Ops that only move values must match bit for bit; the others within 1e-5 of the magnitude
// of their terms (the GPU's row reductions are trees where the CPU's are 8-lane chains, and
// its expf is not the CPU's).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/ops.h"

namespace spanserve::kernels::cuda {
namespace {

constexpr DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};
constexpr int64_t kDims[] = {32, 64, 96, 100, 576, 1000};

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

std::vector<int32_t> RandomInts(int64_t n, uint32_t seed, int32_t lo, int32_t hi) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& i : v) i = dist(rng);
  return v;
}

// Values stored in a dtype (f32 or 16-bit bits), with their widened f32 values.
struct Stored {
  DType dtype = DType::kF32;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<float> widened;

  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : half.data();
  }
  WeightVector Vector() const { return {data(), dtype, static_cast<int64_t>(widened.size())}; }
  WeightMatrix Matrix(int64_t rows, int64_t cols) const { return {data(), dtype, rows, cols}; }
};

Stored Store(const std::vector<float>& values, DType dtype) {
  Stored s;
  s.dtype = dtype;
  if (dtype == DType::kF32) {
    s.f32 = values;
    s.widened = values;
    return s;
  }
  for (float v : values) {
    const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
    s.half.push_back(h);
    s.widened.push_back(dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h));
  }
  return s;
}

::testing::AssertionResult BitIdentical(const std::vector<float>& got,
                                        const std::vector<float>& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure() << "element " << i << ": " << got[i] << " vs " << want[i]
                                           << " (of " << got.size() << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// |got - want| ≤ 1e-5 · scale[i] (scale: the magnitude of the terms; |want| when empty), with
// no absolute floor: results near the f32 range's ends (e^-87) count as much as any.
::testing::AssertionResult Near(const std::vector<float>& got, const std::vector<float>& want,
                                const std::vector<double>& scale = {}) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i) {
    const double s = scale.empty() ? std::fabs(static_cast<double>(want[i])) : scale[i];
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= 1e-5 * s)) {
      return ::testing::AssertionFailure() << "element " << i << ": " << got[i] << " vs " << want[i]
                                           << " (scale " << s << ", of " << got.size() << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

class ElementwiseEmuTest : public ::testing::Test {
 protected:
  void SetUp() override { cpu_ = cpu::CreateCpuBackend(BackendOptions{.num_threads = 1}); }
  std::unique_ptr<Backend> cpu_;
};

TEST_F(ElementwiseEmuTest, EmbeddingLookupIsBitExact) {
  for (DType dtype : kDTypes) {
    for (int64_t dim : {32, 64, 96, 100, 576, 1000, 2100}) {
      for (int64_t n : {1, 5}) {
        SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " dim=" << dim << " n=" << n);
        const int64_t rows = 7;
        const Stored table = Store(RandomFloats(rows * dim, 1, -3.0f, 3.0f), dtype);
        std::vector<int32_t> ids = RandomInts(n, 2, 0, rows - 1);
        if (n > 1) ids[1] = ids[0];  // a repeated id
        std::vector<float> got(n * dim, -1.0f), want(n * dim);
        EmbeddingLookup(nullptr, table.data(), dtype, dim, ids.data(), n, got.data());
        cpu_->EmbeddingLookup(table.Matrix(rows, dim), ids.data(), n, want.data());
        EXPECT_TRUE(BitIdentical(got, want));
      }
    }
  }
}

TEST_F(ElementwiseEmuTest, RmsNormMatchesCpu) {
  for (DType dtype : kDTypes) {
    std::vector<int64_t> dims(std::begin(kDims), std::end(kDims));
    dims.push_back(5000);  // more than 4 elements a thread at 1024 threads
    for (int64_t dim : dims) {
      for (int64_t tokens : {1, 3}) {
        for (bool in_place : {false, true}) {
          // In place, the inputs are small enough for eps to matter (mean square ≈ 1.3e-6).
          const float magnitude = in_place ? 1e-3f : 1.0f;
          SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " dim=" << dim
                                            << " tokens=" << tokens << " in_place=" << in_place);
          const std::vector<float> x =
              RandomFloats(tokens * dim, 3, -0.5f * magnitude, 2.0f * magnitude);
          const Stored gain = Store(RandomFloats(dim, 4, -1.5f, 1.5f), dtype);
          const float eps = 1e-6f;
          std::vector<float> want(tokens * dim);
          cpu_->RmsNorm(x.data(), tokens, dim, gain.Vector(), eps, want.data());
          std::vector<float> got = in_place ? x : std::vector<float>(tokens * dim, -7.0f);
          RmsNorm(nullptr, in_place ? got.data() : x.data(), tokens, dim, gain.data(), dtype, eps,
                  got.data());
          EXPECT_TRUE(Near(got, want));
        }
      }
    }
  }
}

TEST_F(ElementwiseEmuTest, LayerNormMatchesCpu) {
  for (DType gain_type : kDTypes) {
    for (int bias_case = 0; bias_case < 4; ++bias_case) {  // none, f32, bf16, f16
      const bool with_bias = bias_case > 0;
      const DType bias_type = with_bias ? kDTypes[bias_case - 1] : DType::kF32;
      for (int64_t dim : kDims) {
        for (int64_t tokens : {1, 4}) {
          SCOPED_TRACE(::testing::Message() << "gain " << DTypeName(gain_type) << " bias "
                                            << (with_bias ? DTypeName(bias_type) : "none")
                                            << " dim=" << dim << " tokens=" << tokens);
          // An offset, so the mean matters; with 4 tokens a spread small enough for eps to
          // matter too (variance ≈ 8e-6).
          const float spread = tokens == 4 ? 0.01f : 2.0f;
          const std::vector<float> x = RandomFloats(tokens * dim, 5, 3.0f, 3.0f + spread);
          const Stored gain = Store(RandomFloats(dim, 6, 0.5f, 1.5f), gain_type);
          const Stored bias = Store(RandomFloats(dim, 7), bias_type);
          const WeightVector bias_view = bias.Vector();
          const float eps = 1e-5f;
          std::vector<float> want(tokens * dim);
          cpu_->LayerNorm(x.data(), tokens, dim, gain.Vector(), with_bias ? &bias_view : nullptr,
                          eps, want.data());
          std::vector<float> got = x;  // in place every other call
          const bool in_place = tokens == 4;
          if (!in_place) std::fill(got.begin(), got.end(), -7.0f);
          LayerNorm(nullptr, in_place ? got.data() : x.data(), tokens, dim, gain.data(), gain_type,
                    with_bias ? bias.data() : nullptr, bias_type, eps, got.data());
          // The terms: (|x| + |mean|) / std · |gain| (+ |bias|): the mean's rounding shows in
          // x - mean at the scale of x.
          std::vector<double> scale(tokens * dim);
          for (int64_t t = 0; t < tokens; ++t) {
            double mean = 0, var = 0;
            for (int64_t i = 0; i < dim; ++i) mean += x[t * dim + i];
            mean /= dim;
            for (int64_t i = 0; i < dim; ++i) var += std::pow(x[t * dim + i] - mean, 2);
            const double inv_std = 1.0 / std::sqrt(var / dim + eps);
            for (int64_t i = 0; i < dim; ++i) {
              scale[t * dim + i] = (std::fabs(x[t * dim + i]) + std::fabs(mean)) * inv_std *
                                       std::fabs(gain.widened[i]) +
                                   (with_bias ? std::fabs(bias.widened[i]) : 0.0);
            }
          }
          EXPECT_TRUE(Near(got, want, scale));
        }
      }
    }
  }
}

TEST_F(ElementwiseEmuTest, ApplyRopeMatchesCpu) {
  const int64_t max_positions = 50;
  for (int64_t head_dim : {32, 64, 96, 128}) {
    std::vector<float> cos_table(max_positions * head_dim / 2);
    std::vector<float> sin_table(max_positions * head_dim / 2);
    cpu_->RopeTables(max_positions, head_dim, 10000.0, RopeScaling{}, cos_table.data(),
                     sin_table.data());
    for (int64_t heads : {1, 3, 14}) {  // 14 heads of 128: 896 pairs, several blocks a token
      for (int64_t tokens : {1, 4}) {
        SCOPED_TRACE(::testing::Message()
                     << "head_dim=" << head_dim << " heads=" << heads << " tokens=" << tokens);
        const std::vector<int32_t> positions = RandomInts(tokens, 8, 0, max_positions - 1);
        const std::vector<float> x = RandomFloats(tokens * heads * head_dim, 9, -2.0f, 2.0f);
        std::vector<float> want = x, got = x;
        cpu_->ApplyRope(want.data(), tokens, heads, head_dim, positions.data(), cos_table.data(),
                        sin_table.data());
        ApplyRope(nullptr, got.data(), tokens, heads, head_dim, positions.data(), cos_table.data(),
                  sin_table.data());
        // Terms: |a·cos| + |b·sin| ≤ |a| + |b| of the pair.
        std::vector<double> scale(x.size());
        const int64_t half = head_dim / 2;
        for (int64_t r = 0; r < tokens * heads; ++r) {
          for (int64_t i = 0; i < half; ++i) {
            const double s = std::fabs(x[r * head_dim + i]) + std::fabs(x[r * head_dim + half + i]);
            scale[r * head_dim + i] = scale[r * head_dim + half + i] = s;
          }
        }
        EXPECT_TRUE(Near(got, want, scale));
      }
    }
  }
}

constexpr int64_t kLengths[] = {1, 31, 255, 256, 257, 1000, 5000};

TEST_F(ElementwiseEmuTest, SiluMulMatchesCpu) {
  for (int64_t n : kLengths) {
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " in_place=" << in_place);
      std::vector<float> gate = RandomFloats(n, 10, -12.0f, 12.0f);
      const std::vector<float> up = RandomFloats(n, 11, -2.0f, 2.0f);
      // The ends of the exponential's range, and past them.
      const float extremes[] = {0.0f, -0.0f, -87.0f, -88.5f, -100.0f, 87.5f, 100.0f, 1e-30f};
      for (size_t i = 0; i < std::size(extremes) && i < gate.size(); ++i) gate[i] = extremes[i];
      std::vector<float> want(n);
      cpu_->SiluMul(gate.data(), up.data(), n, want.data());
      std::vector<float> got = in_place ? gate : std::vector<float>(n, -7.0f);
      SiluMul(nullptr, in_place ? got.data() : gate.data(), up.data(), n, got.data());
      std::vector<double> scale(n);
      for (int64_t i = 0; i < n; ++i) scale[i] = std::fabs(static_cast<double>(want[i]));
      EXPECT_TRUE(Near(got, want, scale));
    }
  }
}

TEST_F(ElementwiseEmuTest, GeluTanhMulMatchesCpu) {
  for (int64_t n : kLengths) {
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " in_place=" << in_place);
      std::vector<float> gate = RandomFloats(n, 20, -12.0f, 12.0f);
      const std::vector<float> up = RandomFloats(n, 21, -2.0f, 2.0f);
      // Zeros, tanh's saturation both ways, a cube past the f32 range, and a tiny input.
      const float extremes[] = {0.0f, -0.0f, -9.0f, -30.0f, 30.0f, 1e20f, -1e20f, 1e-30f};
      for (size_t i = 0; i < std::size(extremes) && i < gate.size(); ++i) gate[i] = extremes[i];
      std::vector<float> want(n);
      cpu_->GeluTanhMul(gate.data(), up.data(), n, want.data());
      std::vector<float> got = in_place ? gate : std::vector<float>(n, -7.0f);
      GeluTanhMul(nullptr, in_place ? got.data() : gate.data(), up.data(), n, got.data());
      // The emulation runs the same f32 operations in the same order: bit for bit.
      EXPECT_TRUE(std::memcmp(got.data(), want.data(), n * sizeof(float)) == 0);
    }
  }
}

TEST_F(ElementwiseEmuTest, AddAndAxpbyMatchCpu) {
  for (int64_t n : kLengths) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const std::vector<float> x = RandomFloats(n, 12, -3.0f, 3.0f);
    const std::vector<float> y0 = RandomFloats(n, 13, -3.0f, 3.0f);
    std::vector<double> scale(n);
    for (int64_t i = 0; i < n; ++i) scale[i] = std::fabs(x[i]) + std::fabs(y0[i]);

    std::vector<float> want = y0, got = y0;
    cpu_->Add(x.data(), want.data(), n);
    Add(nullptr, x.data(), got.data(), n);
    EXPECT_TRUE(Near(got, want, scale));

    const float a = 0.37f, b = -1.25f;
    want = y0;
    got = y0;
    cpu_->Axpby(a, x.data(), b, want.data(), n);
    Axpby(nullptr, a, x.data(), b, got.data(), n);
    for (int64_t i = 0; i < n; ++i) scale[i] = std::fabs(a * x[i]) + std::fabs(b * y0[i]);
    EXPECT_TRUE(Near(got, want, scale));
  }
}

TEST_F(ElementwiseEmuTest, SumOfSquaresMatchesCpuAndRepeats) {
  for (int64_t n : {0, 1, 1000, 1023, 1025, 8 * 1024 + 3, 70001}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const std::vector<float> x = RandomFloats(std::max<int64_t>(n, 1), 14, -4.0f, 4.0f);
    const double want = cpu_->SumOfSquares(x.data(), n);
    double got = -1.0, again = -2.0;
    SumOfSquares(nullptr, x.data(), n, &got);
    SumOfSquares(nullptr, x.data(), n, &again);
    EXPECT_NEAR(got, want, 1e-12 * want);
    if (n == 0) {
      EXPECT_EQ(got, 0.0);
    }
    EXPECT_EQ(std::memcmp(&got, &again, sizeof(double)), 0);
  }
}

TEST_F(ElementwiseEmuTest, GatherRowsIsBitExact) {
  for (int64_t width : {32, 100, 576, 1000, 2100}) {
    for (int32_t divisor : {1, 2, 8}) {
      for (int64_t count : {1, 6}) {
        SCOPED_TRACE(::testing::Message()
                     << "width=" << width << " divisor=" << divisor << " count=" << count);
        const int64_t src_rows = 5;
        const std::vector<float> src = RandomFloats(src_rows * width, 15);
        const std::vector<int32_t> rows =
            RandomInts(count, 16 + divisor, 0, static_cast<int32_t>(src_rows * divisor - 1));
        std::vector<float> want(count * width), got(count * width, -7.0f);
        cpu_->GatherRows(src.data(), width, rows.data(), count, divisor, want.data());
        GatherRows(nullptr, src.data(), width, rows.data(), count, divisor, got.data());
        EXPECT_TRUE(BitIdentical(got, want));
      }
    }
  }
}

TEST_F(ElementwiseEmuTest, ScatterRowsIsBitExact) {
  for (int64_t width : {32, 100, 576, 1000, 2100}) {
    for (int64_t count : {1, 4, 9}) {
      SCOPED_TRACE(::testing::Message() << "width=" << width << " count=" << count);
      const int64_t dst_rows = 11;
      std::vector<int32_t> rows(dst_rows);
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), std::mt19937(17));
      rows.resize(count);  // distinct rows; the others must stay untouched
      const std::vector<float> src = RandomFloats(count * width, 18);
      const std::vector<float> dst0 = RandomFloats(dst_rows * width, 19);
      std::vector<float> want = dst0, got = dst0;
      cpu_->ScatterRows(src.data(), width, rows.data(), count, want.data());
      ScatterRows(nullptr, src.data(), width, rows.data(), count, got.data());
      EXPECT_TRUE(BitIdentical(got, want));
    }
  }
}

TEST_F(ElementwiseEmuTest, MoeRouteMatchesCpu) {
  for (RouterScoring scoring : {RouterScoring::kSoftmax, RouterScoring::kSigmoid}) {
    for (int32_t experts : {8, 32, 60, 64, 128, 256, 300}) {
      // top_k = experts orders them all (kept to the smaller counts: each pick is a round).
      for (int32_t top_k : {1, 2, 8, experts}) {
        if (top_k > experts || (top_k == experts && experts > 64)) continue;
        for (bool normalize : {false, true}) {
          for (bool ties : {false, true}) {
            for (int64_t tokens : {1, 9}) {  // 9: three blocks, the last one ragged
              SCOPED_TRACE(::testing::Message()
                           << (scoring == RouterScoring::kSoftmax ? "softmax" : "sigmoid")
                           << " experts=" << experts << " top_k=" << top_k << " normalize="
                           << normalize << " ties=" << ties << " tokens=" << tokens);
              std::vector<float> logits = RandomFloats(tokens * experts, 20 + experts, -4.0f, 4.0f);
              // Few distinct values: many experts tie, and ties must go to the lower id.
              if (ties) {
                for (float& v : logits) v = std::round(v);
                if (scoring == RouterScoring::kSigmoid && experts >= 8) {
                  // Scores of exactly 1 and 0, tied.
                  logits[1] = logits[5] = 100.0f;
                  logits[2] = logits[3] = -200.0f;
                }
              } else {
                logits[0] = -100.0f;  // past the CPU exponential's clamp at -87.3
              }
              std::vector<float> want_scores = logits, got_scores = logits;
              std::vector<int32_t> want_e(tokens * top_k), got_e(tokens * top_k, -5);
              std::vector<float> want_w(tokens * top_k), got_w(tokens * top_k, -5.0f);
              cpu_->MoeRoute(want_scores.data(), tokens, experts, scoring, top_k, normalize,
                             want_e.data(), want_w.data());
              MoeRoute(nullptr, got_scores.data(), tokens, experts, scoring, top_k, normalize,
                       got_e.data(), got_w.data());
              EXPECT_TRUE(Near(got_scores, want_scores));
              EXPECT_EQ(got_e, want_e);
              EXPECT_TRUE(Near(got_w, want_w));
            }
          }
        }
      }
    }
  }
}

TEST_F(ElementwiseEmuTest, MoeCombineMatchesCpu) {
  for (int64_t width : {32, 100, 576, 1000, 2100}) {
    for (int32_t top_k : {1, 2, 8}) {
      for (int64_t tokens : {1, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << "width=" << width << " top_k=" << top_k << " tokens=" << tokens);
        const std::vector<float> slot_out = RandomFloats(tokens * top_k * width, 21, -3.0f, 3.0f);
        const std::vector<float> weights = RandomFloats(tokens * top_k, 22, 0.0f, 1.0f);
        std::vector<float> want(tokens * width), got(tokens * width, -7.0f);
        cpu_->MoeCombine(slot_out.data(), weights.data(), tokens, top_k, width, want.data());
        MoeCombine(nullptr, slot_out.data(), weights.data(), tokens, top_k, width, got.data());
        std::vector<double> scale(tokens * width, 0.0);
        for (int64_t t = 0; t < tokens; ++t) {
          for (int32_t j = 0; j < top_k; ++j) {
            for (int64_t c = 0; c < width; ++c) {
              scale[t * width + c] +=
                  std::fabs(weights[t * top_k + j] * slot_out[(t * top_k + j) * width + c]);
            }
          }
        }
        EXPECT_TRUE(Near(got, want, scale));
      }
    }
  }
}

TEST_F(ElementwiseEmuTest, GatedAddMatchesCpu) {
  for (bool gated : {true, false}) {
    for (int64_t width : {32, 100, 576, 1000, 2100}) {
      for (int64_t tokens : {1, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << "gated=" << gated << " width=" << width << " tokens=" << tokens);
        std::vector<float> gate = RandomFloats(tokens, 23, -6.0f, 6.0f);
        if (tokens > 2) gate[2] = -100.0f;  // sigmoid → 0
        const std::vector<float> x = RandomFloats(tokens * width, 24, -3.0f, 3.0f);
        const std::vector<float> y0 = RandomFloats(tokens * width, 25, -3.0f, 3.0f);
        std::vector<float> want = y0, got = y0;
        const float* g = gated ? gate.data() : nullptr;
        cpu_->GatedAdd(g, x.data(), tokens, width, want.data());
        GatedAdd(nullptr, g, x.data(), tokens, width, got.data());
        std::vector<double> scale(tokens * width);
        for (int64_t i = 0; i < tokens * width; ++i) scale[i] = std::fabs(x[i]) + std::fabs(y0[i]);
        EXPECT_TRUE(Near(got, want, scale));
      }
    }
  }
}

// Empty inputs launch nothing (a grid of zero blocks is an error on the device).
TEST_F(ElementwiseEmuTest, EmptyInputsAreNoOps) {
  float f = 3.0f;
  int32_t id = 0;
  EmbeddingLookup(nullptr, &f, DType::kF32, 1, &id, 0, &f);
  RmsNorm(nullptr, &f, 0, 1, &f, DType::kF32, 1e-6f, &f);
  LayerNorm(nullptr, &f, 0, 1, &f, DType::kF32, nullptr, DType::kF32, 1e-6f, &f);
  ApplyRope(nullptr, &f, 0, 1, 2, &id, &f, &f);
  SiluMul(nullptr, &f, &f, 0, &f);
  GeluTanhMul(nullptr, &f, &f, 0, &f);
  Add(nullptr, &f, &f, 0);
  Axpby(nullptr, 1.0f, &f, 1.0f, &f, 0);
  GatherRows(nullptr, &f, 1, &id, 0, 1, &f);
  ScatterRows(nullptr, &f, 1, &id, 0, &f);
  MoeRoute(nullptr, &f, 0, 1, RouterScoring::kSoftmax, 1, true, &id, &f);
  MoeCombine(nullptr, &f, &f, 0, 1, 1, &f);
  GatedAdd(nullptr, &f, &f, 0, 1, &f);
  EXPECT_EQ(f, 3.0f);
  EXPECT_EQ(id, 0);
}

}  // namespace
}  // namespace spanserve::kernels::cuda
