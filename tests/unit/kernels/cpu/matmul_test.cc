#include "kernels/cpu/matmul.h"

#include "common/thread_pool.h"
#include "kernels/cpu/dequant.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::BitIdentical;
using testing::CpuHasAvx512ForTest;
using testing::Dequantized;
using testing::RandomFloats;
using testing::ScopedIsa;
using testing::StoredWeights;
using testing::StoreWeights;

struct Reference {
  std::vector<double> y;        // [m, n]
  std::vector<double> abs_sum;  // Σ|x·w| + |bias|: the scale f32 rounding errors follow
};

// y[i, j] = Σ_p x[i, p]·w[j, p] + bias[j] in double over the widened weights.
Reference NaiveMatMul(const std::vector<float>& x, int64_t m, const std::vector<float>& w,
                      int64_t n, int64_t k, const std::vector<float>* bias) {
  Reference ref{std::vector<double>(m * n), std::vector<double>(m * n)};
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = bias ? (*bias)[j] : 0.0;
      double a = bias ? std::fabs((*bias)[j]) : 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double prod = static_cast<double>(x[i * k + p]) * w[j * k + p];
        s += prod;
        a += std::fabs(prod);
      }
      ref.y[i * n + j] = s;
      ref.abs_sum[i * n + j] = a;
    }
  }
  return ref;
}

// Every MatMul test runs for each weight type on each instruction set this CPU has.
class MatMulTest : public ::testing::TestWithParam<std::tuple<DType, Isa>> {
 protected:
  void SetUp() override {
    if (std::get<1>(GetParam()) == Isa::kAvx512 && !CpuHasAvx512ForTest()) {
      GTEST_SKIP() << "this CPU has no AVX-512";
    }
    isa_.emplace(std::get<1>(GetParam()));
  }
  void TearDown() override { isa_.reset(); }
  DType dtype() const { return std::get<0>(GetParam()); }

  // Checks MatMul on [m, k] × [n, k]ᵀ against the double reference.
  void CheckAgainstReference(int64_t m, int64_t n, int64_t k, bool with_bias) {
    SCOPED_TRACE(::testing::Message()
                 << "m=" << m << " n=" << n << " k=" << k << " bias=" << with_bias);
    const std::vector<float> x = RandomFloats(m * k, 1);
    const StoredWeights w = StoreWeights(RandomFloats(n * k, 2), dtype());
    const StoredWeights b = StoreWeights(RandomFloats(n, 3), dtype());
    const WeightVector bias = b.Vector();
    std::vector<float> y(m * n, -7.0f);
    MatMul(x.data(), m, w.Matrix(n, k), with_bias ? &bias : nullptr, y.data());
    const Reference ref = NaiveMatMul(x, m, w.widened, n, k, with_bias ? &b.widened : nullptr);
    for (int64_t i = 0; i < m * n; ++i) {
      ASSERT_NEAR(y[i], ref.y[i], 1e-5 * ref.abs_sum[i] + 1e-30) << "at " << i / n << "," << i % n;
    }
  }

 private:
  std::optional<ScopedIsa> isa_;
};

TEST_P(MatMulTest, MatchesDoubleReferenceOnOddShapes) {
  for (int64_t m : {1, 3, 17, 64}) {
    CheckAgainstReference(m, /*n=*/45, /*k=*/67, /*with_bias=*/false);
    CheckAgainstReference(m, /*n=*/45, /*k=*/67, /*with_bias=*/true);
  }
}

TEST_P(MatMulTest, MatchesDoubleReferenceAcrossXTilesAndPanels) {
  // k = 2051 makes x tiles of 28 rows (two tiles for m = 40) and a 3-element k-tail;
  // n = 53 leaves partial panels and partial micro-kernels.
  CheckAgainstReference(/*m=*/40, /*n=*/53, /*k=*/2051, /*with_bias=*/true);
  CheckAgainstReference(/*m=*/2, /*n=*/131, /*k=*/5, /*with_bias=*/false);
  CheckAgainstReference(/*m=*/5, /*n=*/7, /*k=*/8, /*with_bias=*/false);
}

// Each row of a batched product must be bit-identical to that row computed alone.
void ExpectBatchInvariant(DType dtype, int64_t m, int64_t n, int64_t k) {
  SCOPED_TRACE(::testing::Message() << "m=" << m << " n=" << n << " k=" << k);
  const std::vector<float> x = RandomFloats(m * k, 11);
  const StoredWeights w = StoreWeights(RandomFloats(n * k, 12), dtype);
  const StoredWeights b = StoreWeights(RandomFloats(n, 13), dtype);
  const WeightVector bias = b.Vector();
  std::vector<float> batched(m * n);
  MatMul(x.data(), m, w.Matrix(n, k), &bias, batched.data());
  std::vector<float> alone(n);
  for (int64_t i = 0; i < m; ++i) {
    MatMul(x.data() + i * k, 1, w.Matrix(n, k), &bias, alone.data());
    for (int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(batched[i * n + j], alone[j]) << "row " << i << " col " << j;
    }
  }
  // Row i at a different place in a smaller batch (rows i-2, i-1, i) lands in another
  // micro-kernel shape.
  for (int64_t i = 2; i < m; i += 5) {
    std::vector<float> three(3 * n);
    MatMul(x.data() + (i - 2) * k, 3, w.Matrix(n, k), &bias, three.data());
    EXPECT_TRUE(BitIdentical(three.data() + 2 * n, batched.data() + i * n, n)) << "row " << i;
  }
}

TEST_P(MatMulTest, RowsAreBitIdenticalWhateverTheBatch) {
  ExpectBatchInvariant(dtype(), /*m=*/37, /*n=*/45, /*k=*/67);
  ExpectBatchInvariant(dtype(), /*m=*/37, /*n=*/29, /*k=*/2051);
  ExpectBatchInvariant(dtype(), /*m=*/20, /*n=*/61, /*k=*/16);
}

TEST_P(MatMulTest, ResultDoesNotDependOnThreadCount) {
  const int64_t m = 19, n = 101, k = 203;
  const std::vector<float> x = RandomFloats(m * k, 21);
  const StoredWeights w = StoreWeights(RandomFloats(n * k, 22), dtype());
  std::vector<float> one(m * n), many(m * n);
  {
    UsePool alone(nullptr);
    MatMul(x.data(), m, w.Matrix(n, k), nullptr, one.data());
  }
  ThreadPool five(5);
  UsePool use(&five);
  MatMul(x.data(), m, w.Matrix(n, k), nullptr, many.data());
  EXPECT_TRUE(BitIdentical(one.data(), many.data(), m * n));
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypesAndIsas, MatMulTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kBF16,
                                                              DType::kF16),
                                            ::testing::Values(Isa::kAvx2, Isa::kAvx512)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, Isa>>& info) {
                           return std::string(DTypeName(std::get<0>(info.param))) + "_" +
                                  IsaName(std::get<1>(info.param));
                         });

// The AVX-512 kernels promise the AVX2 kernels' bits, so a process's output does not depend
// on which of them ran (and batch invariance holds across the m > 4 switch between them).
TEST(MatMul, Avx512IsBitIdenticalToAvx2) {
  const Isa saved = SetMaxIsa(Isa::kAvx512);
  if (ActiveIsa() != Isa::kAvx512) {
    SetMaxIsa(saved);
    GTEST_SKIP() << "this CPU has no AVX-512";
  }
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t m : {5, 8, 9, 16, 23, 64, 100}) {
      for (int64_t n : {1, 7, 24, 25, 53, 130}) {
        for (int64_t k : {0, 3, 8, 67, 896, 2051}) {
          SCOPED_TRACE(::testing::Message() << "dtype=" << static_cast<int>(dtype) << " m=" << m
                                            << " n=" << n << " k=" << k);
          const std::vector<float> x = RandomFloats(m * k, 41);
          const StoredWeights w = StoreWeights(RandomFloats(n * k, 42), dtype);
          const StoredWeights b = StoreWeights(RandomFloats(n, 43), dtype);
          const WeightVector bias = b.Vector();
          std::vector<float> wide(m * n, -1.0f), narrow(m * n, -2.0f);
          SetMaxIsa(Isa::kAvx512);
          MatMul(x.data(), m, w.Matrix(n, k), &bias, wide.data());
          SetMaxIsa(Isa::kAvx2);
          MatMul(x.data(), m, w.Matrix(n, k), &bias, narrow.data());
          ASSERT_TRUE(BitIdentical(wide.data(), narrow.data(), m * n));
        }
      }
    }
  }
  SetMaxIsa(saved);
}

TEST(MatMul, BiasOnlyWhenKIsZero) {
  const float bias_values[3] = {1.5f, -2.0f, 0.25f};
  const WeightVector bias{bias_values, DType::kF32, 3};
  const WeightMatrix w{bias_values, DType::kF32, /*rows=*/3, /*cols=*/0};
  float y[6];
  MatMul(bias_values, 2, w, &bias, y);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(y[i], bias_values[i % 3]);
}

// n rows of k / 32 random blocks of a quantized format (scales in ±0.05, valid f16).
std::vector<uint8_t> RandomQuantRows(QuantType q, int64_t n, int64_t k, uint32_t seed) {
  const int64_t block_bytes = QuantBlockBytes(q);
  std::vector<uint8_t> bytes(n * k / 32 * block_bytes);
  const std::vector<float> scales = RandomFloats(2 * n * k / 32, seed);
  const std::vector<float> noise = RandomFloats(bytes.size(), seed + 1);
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<uint8_t>(static_cast<int>(std::fabs(noise[i]) * 4096.0f) & 0xff);
  }
  for (int64_t b = 0; b < n * k / 32; ++b) {
    const uint16_t d = F32ToF16(0.05f * scales[2 * b]);
    std::memcpy(&bytes[b * block_bytes], &d, 2);
    if (q == QuantType::kQ4_1) {
      const uint16_t m = F32ToF16(0.05f * scales[2 * b + 1]);
      std::memcpy(&bytes[b * block_bytes + 2], &m, 2);
    }
  }
  return bytes;
}

// Quantized weights stay in their blocks; every product equals, bit for bit, MatMul on the
// dequantized f32 copy (which the GGUF loader used to make), on either instruction set.
class QuantMatMulTest : public ::testing::TestWithParam<std::tuple<QuantType, Isa>> {};

TEST_P(QuantMatMulTest, EqualsMatMulOnTheDequantizedCopyBitForBit) {
  const auto [q, isa] = GetParam();
  if (isa == Isa::kAvx512 && !CpuHasAvx512ForTest()) {
    GTEST_SKIP() << "this CPU has no AVX-512";
  }
  ScopedIsa scoped(isa);
  for (int64_t k : {32, 96, 576, 2048}) {
    for (int64_t n : {1, 7, 29, 50}) {
      const std::vector<uint8_t> blocks = RandomQuantRows(q, n, k, static_cast<uint32_t>(n + k));
      const std::vector<float> wf = Dequantized(q, blocks, n * k);
      const std::vector<float> bias = RandomFloats(n, 7);
      const WeightVector bv{bias.data(), DType::kF32, n};
      WeightMatrix wq{blocks.data(), DType::kF32, n, k, q};
      const WeightMatrix wd{wf.data(), DType::kF32, n, k};
      for (int64_t m : {1, 2, 3, 4, 5, 8, 16, 37}) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " n=" << n << " m=" << m);
        const std::vector<float> x = RandomFloats(m * k, 9);
        std::vector<float> yq(m * n, -1.0f), yd(m * n, -2.0f);
        MatMul(x.data(), m, wq, &bv, yq.data());
        MatMul(x.data(), m, wd, &bv, yd.data());
        ASSERT_TRUE(BitIdentical(yq.data(), yd.data(), m * n));
      }
      // Embedding rows are the dequantized rows.
      const int32_t ids[3] = {0, static_cast<int32_t>(n - 1), static_cast<int32_t>(n / 2)};
      std::vector<float> rows(3 * k);
      EmbeddingLookup(wq, ids, 3, rows.data());
      for (int t = 0; t < 3; ++t) {
        ASSERT_TRUE(BitIdentical(rows.data() + t * k, wf.data() + ids[t] * k, k));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllQuantTypesAndIsas, QuantMatMulTest,
                         ::testing::Combine(::testing::Values(QuantType::kQ8_0, QuantType::kQ4_0,
                                                              QuantType::kQ4_1),
                                            ::testing::Values(Isa::kAvx2, Isa::kAvx512)),
                         [](const ::testing::TestParamInfo<std::tuple<QuantType, Isa>>& info) {
                           const QuantType q = std::get<0>(info.param);
                           return std::string(q == QuantType::kQ8_0   ? "Q8_0"
                                              : q == QuantType::kQ4_0 ? "Q4_0"
                                                                      : "Q4_1") +
                                  "_" + IsaName(std::get<1>(info.param));
                         });

// The bf16 dot-product path (MatMulPrecision::kBf16Dot): against a reference in double on
// the bf16-rounded activations, close to the exact path, and batch-invariant.
class MatMulBf16DotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CpuHasBf16Dot()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  }
};

TEST_F(MatMulBf16DotTest, MatchesTheProductOfTheBf16RoundedActivations) {
  for (int64_t k : {0, 3, 32, 40, 100, 896}) {
    for (int64_t n : {1, 5, 7, 13, 50}) {
      const StoredWeights w =
          StoreWeights(RandomFloats(n * k, static_cast<uint32_t>(n * k)), DType::kBF16);
      const StoredWeights bias = StoreWeights(RandomFloats(n, 5), DType::kBF16);
      WeightMatrix dot = w.Matrix(n, k);
      dot.precision = MatMulPrecision::kBf16Dot;
      const WeightVector bv = bias.Vector();
      for (int64_t m : {1, 3, 4, 5, 16, 37}) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " n=" << n << " m=" << m);
        const std::vector<float> x = RandomFloats(m * k, 11);
        std::vector<float> y(m * n), exact(m * n);
        MatMul(x.data(), m, dot, &bv, y.data());
        MatMul(x.data(), m, w.Matrix(n, k), &bv, exact.data());
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double ref = bias.widened[j], magnitude = std::abs(bias.widened[j]);
            double exact_magnitude = magnitude;
            for (int64_t p = 0; p < k; ++p) {
              const double xr = Bf16ToF32(F32ToBf16(x[i * k + p]));
              ref += xr * w.widened[j * k + p];
              magnitude += std::abs(xr * w.widened[j * k + p]);
              exact_magnitude += std::abs(x[i * k + p] * w.widened[j * k + p]);
            }
            // f32 accumulation over k / 32 chunks and a 16-lane reduction (any VDPBF16PS
            // rounding: two adds a chunk, a few ulps of Σ|x·w| at k = 896) ...
            ASSERT_NEAR(y[i * n + j], ref, 4e-6 * magnitude + 1e-30);
            // ... and the bf16 rounding of x (relative 2^-9 at most) against the exact path.
            ASSERT_NEAR(y[i * n + j], exact[i * n + j], 0x1p-8 * exact_magnitude);
          }
        }
      }
    }
  }
}

TEST_F(MatMulBf16DotTest, RowsDoNotDependOnTheBatchOrTheThreads) {
  // k = 200: the VDPBF16PS kernels; k = 256 and n = 45 (a partial panel of 32 rows): where
  // the CPU has AMX-BF16, its tiles.
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{29, 200}, {45, 256}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n << " k=" << k);
    const int64_t m = 37;
    const StoredWeights w = StoreWeights(RandomFloats(n * k, 3), DType::kBF16);
    WeightMatrix dot = w.Matrix(n, k);
    dot.precision = MatMulPrecision::kBf16Dot;
    const std::vector<float> x = RandomFloats(m * k, 4);
    std::vector<float> batch(m * n), alone(n), three(m * n);
    MatMul(x.data(), m, dot, nullptr, batch.data());
    for (int64_t i = 0; i < m; ++i) {
      MatMul(x.data() + i * k, 1, dot, nullptr, alone.data());
      ASSERT_TRUE(BitIdentical(alone.data(), batch.data() + i * n, n)) << "row " << i;
    }
    {
      ThreadPool five(5);
      UsePool use(&five);
      MatMul(x.data(), m, dot, nullptr, three.data());
    }
    EXPECT_TRUE(BitIdentical(three.data(), batch.data(), m * n));
  }
}

class EmbeddingTest : public ::testing::TestWithParam<DType> {};

TEST_P(EmbeddingTest, CopiesWidenedRows) {
  const int64_t vocab = 11, dim = 19;
  const StoredWeights table = StoreWeights(RandomFloats(vocab * dim, 31), GetParam());
  const int32_t ids[4] = {3, 0, 10, 3};
  std::vector<float> out(4 * dim);
  EmbeddingLookup(table.Matrix(vocab, dim), ids, 4, out.data());
  for (int t = 0; t < 4; ++t) {
    EXPECT_TRUE(BitIdentical(out.data() + t * dim, table.widened.data() + ids[t] * dim, dim));
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, EmbeddingTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         testing::DTypeParamName);

}  // namespace
}  // namespace spanserve::kernels::cpu
