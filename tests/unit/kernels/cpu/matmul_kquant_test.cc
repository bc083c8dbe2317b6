// MatMul and EmbeddingLookup on Q5_0, Q5_1, the K-quants Q2_K .. Q6_K, IQ4_NL and IQ4_XS kept in
// their blocks: every result equals, bit for bit, the one on the dequantized f32 copy
// (kernels/quant.h's arithmetic), on either instruction set, for any batch and thread count.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/matmul.h"
#include "kernels/quant.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::BitIdentical;
using testing::CpuHasAvx512ForTest;
using testing::Dequantized;
using testing::RandomFloats;
using testing::ScopedIsa;

void PutHalf(uint8_t* p, float v) {
  const uint16_t h = F32ToF16(v);
  std::memcpy(p, &h, 2);
}

// n rows of k / QuantBlockElems(q) random blocks: random quants, sub-block scales and high
// bits; the f16 scales (and mins) set to valid values of either sign.
std::vector<uint8_t> RandomRows(QuantType q, int64_t n, int64_t k, uint32_t seed) {
  const int64_t block_bytes = QuantBlockBytes(q);
  const int64_t blocks = n * k / QuantBlockElems(q);
  std::vector<uint8_t> bytes(blocks * block_bytes);
  const std::vector<float> noise = RandomFloats(bytes.size(), seed);
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<uint8_t>(static_cast<int>(std::fabs(noise[i]) * 4096.0f) & 0xff);
  }
  const std::vector<float> scales = RandomFloats(2 * blocks, seed + 1);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = bytes.data() + b * block_bytes;
    const float d = scales[2 * b], m = scales[2 * b + 1];
    switch (q) {
      case QuantType::kQ5_0:
        PutHalf(p, 0.05f * d);
        break;
      case QuantType::kQ5_1:
        PutHalf(p, 0.05f * d);
        PutHalf(p + 2, 0.05f * m);
        break;
      case QuantType::kQ4_K:
      case QuantType::kQ5_K:
        PutHalf(p, 0.003f * d);
        PutHalf(p + 2, 0.003f * m);
        break;
      case QuantType::kQ6_K:
        PutHalf(p + 208, 0.002f * d);
        break;
      case QuantType::kQ2_K:
        PutHalf(p + 80, 0.003f * d);
        PutHalf(p + 82, 0.003f * m);
        break;
      case QuantType::kQ3_K:
        PutHalf(p + 108, 0.002f * d);
        break;
      case QuantType::kIQ4_NL:
        PutHalf(p, 0.0005f * d);
        break;
      case QuantType::kIQ4_XS:
        PutHalf(p, 0.00002f * d);
        break;
      default:
        ADD_FAILURE() << "no blocks for this format";
    }
  }
  return bytes;
}

// Row lengths: whole blocks, several of them, and (for the 32-blocks) SmolLM2's 576.
std::vector<int64_t> Ks(QuantType q) {
  if (QuantBlockElems(q) == 256) return {256, 768, 1536};
  return {32, 96, 576};
}

class KQuantMatMulTest : public ::testing::TestWithParam<std::tuple<QuantType, Isa>> {
 protected:
  void SetUp() override {
    if (std::get<1>(GetParam()) == Isa::kAvx512 && !CpuHasAvx512ForTest()) {
      GTEST_SKIP() << "this CPU has no AVX-512";
    }
    isa_saved_ = SetMaxIsa(std::get<1>(GetParam()));
  }
  void TearDown() override { SetMaxIsa(isa_saved_); }
  QuantType quant() const { return std::get<0>(GetParam()); }

 private:
  Isa isa_saved_ = Isa::kAvx2;
};

TEST_P(KQuantMatMulTest, EqualsMatMulOnTheDequantizedCopyBitForBit) {
  const QuantType q = quant();
  for (const int64_t k : Ks(q)) {
    for (const int64_t n : {1, 7, 29, 50}) {  // ragged against every micro-kernel's rows
      const std::vector<uint8_t> blocks = RandomRows(q, n, k, static_cast<uint32_t>(n + k));
      const std::vector<float> wf = Dequantized(q, blocks, n * k);
      const std::vector<float> bias = RandomFloats(n, 7);
      const WeightVector bv{bias.data(), DType::kF32, n};
      const WeightMatrix wq{blocks.data(), DType::kF32, n, k, q};
      const WeightMatrix wd{wf.data(), DType::kF32, n, k};
      for (const int64_t m : {1, 2, 3, 4, 5, 7, 8, 37}) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " n=" << n << " m=" << m);
        const std::vector<float> x = RandomFloats(m * k, 9);
        std::vector<float> yq(m * n, -1.0f), yd(m * n, -2.0f);
        MatMul(x.data(), m, wq, &bv, yq.data());
        MatMul(x.data(), m, wd, &bv, yd.data());
        ASSERT_TRUE(BitIdentical(yq.data(), yd.data(), m * n));
        for (const float v : yq) ASSERT_TRUE(std::isfinite(v));
      }
    }
  }
}

// A row's result never depends on the batch it is in nor on the thread count.
TEST_P(KQuantMatMulTest, RowsDoNotDependOnTheBatchOrTheThreads) {
  const QuantType q = quant();
  const int64_t k = Ks(q)[1], n = 45, m = 37;
  const std::vector<uint8_t> blocks = RandomRows(q, n, k, 11);
  const WeightMatrix wq{blocks.data(), DType::kF32, n, k, q};
  const std::vector<float> x = RandomFloats(m * k, 12);
  std::vector<float> batch(m * n);
  MatMul(x.data(), m, wq, nullptr, batch.data());
  for (const int64_t i : {int64_t{0}, int64_t{5}, m - 1}) {
    for (const int64_t rows : {int64_t{1}, int64_t{3}}) {
      if (i + rows > m) continue;
      std::vector<float> alone(rows * n);
      MatMul(x.data() + i * k, rows, wq, nullptr, alone.data());
      ASSERT_TRUE(BitIdentical(alone.data(), batch.data() + i * n, rows * n))
          << "rows " << i << ".." << i + rows - 1;
    }
  }
  for (const int64_t mm : {int64_t{1}, int64_t{3}, int64_t{7}, m}) {
    std::vector<float> one(mm * n), five(mm * n);
    {
      UsePool alone(nullptr);
      MatMul(x.data(), mm, wq, nullptr, one.data());
    }
    {
      ThreadPool pool(5);
      UsePool use(&pool);
      MatMul(x.data(), mm, wq, nullptr, five.data());
    }
    ASSERT_TRUE(BitIdentical(one.data(), five.data(), mm * n)) << "m=" << mm;
    ASSERT_TRUE(BitIdentical(one.data(), batch.data(), mm * n)) << "m=" << mm;
  }
}

// Embedding rows are the dequantized rows.
TEST_P(KQuantMatMulTest, EmbeddingLookupGivesTheDequantizedRows) {
  const QuantType q = quant();
  const int64_t k = Ks(q)[1], vocab = 13;
  const std::vector<uint8_t> blocks = RandomRows(q, vocab, k, 21);
  const std::vector<float> wf = Dequantized(q, blocks, vocab * k);
  const WeightMatrix table{blocks.data(), DType::kF32, vocab, k, q};
  const int32_t ids[] = {3, 0, 12, 3, 7};
  std::vector<float> out(5 * k);
  EmbeddingLookup(table, ids, 5, out.data());
  for (int t = 0; t < 5; ++t) {
    ASSERT_TRUE(BitIdentical(out.data() + t * k, wf.data() + ids[t] * k, k)) << "id " << ids[t];
  }
}

// IQ4_NL and Q3_K re-encoded for the integer dot products (Q8_0, Q6_K) dequantize to the same
// values bit for bit.
TEST(Int8ReEncoding, GivesTheSameValuesBitForBit) {
  for (const QuantType q : {QuantType::kIQ4_NL, QuantType::kQ3_K}) {
    SCOPED_TRACE(QuantTypeName(q));
    const int64_t n = 9, k = 768;
    const std::vector<uint8_t> blocks = RandomRows(q, n, k, 31);
    const QuantType f = Int8DotFormat(q);
    std::vector<uint8_t> re(n * k / QuantBlockElems(f) * QuantBlockBytes(f), 0xAB);
    if (q == QuantType::kIQ4_NL) {
      ConvertIQ4_NLToQ8_0(blocks.data(), n * k, re.data());
    } else {
      ConvertQ3_KToQ6_K(blocks.data(), n * k, re.data());
    }
    const std::vector<float> want = Dequantized(q, blocks, n * k);
    for (float v : want) ASSERT_TRUE(std::isfinite(v));
    ASSERT_TRUE(BitIdentical(Dequantized(f, re, n * k).data(), want.data(), n * k));
  }
}

// Through the CPU backend, IQ4_NL and Q3_K matrices that ask for int8 dot products take them:
// the results equal, bit for bit, those of the re-encoded matrix, and differ from the exact
// ones (activations rounded to 8 bits).
TEST(Int8ReEncoding, TheCpuBackendTakesThemToTheIntegerKernels) {
  std::unique_ptr<Backend> be = CreateCpuBackend(BackendOptions{.num_threads = 2});
  for (const QuantType q : {QuantType::kIQ4_NL, QuantType::kQ3_K}) {
    SCOPED_TRACE(QuantTypeName(q));
    const int64_t n = 37, k = 512;
    const std::vector<uint8_t> blocks = RandomRows(q, n, k, 41);
    const QuantType f = Int8DotFormat(q);
    std::vector<uint8_t> re(n * k / QuantBlockElems(f) * QuantBlockBytes(f));
    if (q == QuantType::kIQ4_NL) {
      ConvertIQ4_NLToQ8_0(blocks.data(), n * k, re.data());
    } else {
      ConvertQ3_KToQ6_K(blocks.data(), n * k, re.data());
    }
    WeightMatrix wq{blocks.data(), DType::kF32, n, k, q};
    WeightMatrix wf{re.data(), DType::kF32, n, k, f};
    wq.precision = wf.precision = MatMulPrecision::kInt8Dot;
    absl::StatusOr<WeightMatrix> uq = be->UploadMatrix(wq);
    absl::StatusOr<WeightMatrix> uf = be->UploadMatrix(wf);
    ASSERT_TRUE(uq.ok() && uf.ok());
    // Re-encoded, or (IQ4_NL on a VNNI CPU) packed as it is.
    EXPECT_TRUE(uq->quant == f || uq->packed != nullptr);
    const WeightMatrix exact{blocks.data(), DType::kF32, n, k, q};
    for (const int64_t m : {1, 5, 16}) {
      const std::vector<float> x = RandomFloats(m * k, 43);
      std::vector<float> got(m * n), want(m * n), y_exact(m * n);
      be->MatMul(x.data(), m, *uq, nullptr, got.data());
      be->MatMul(x.data(), m, *uf, nullptr, want.data());
      be->MatMul(x.data(), m, exact, nullptr, y_exact.data());
      ASSERT_TRUE(be->Synchronize().ok());
      ASSERT_TRUE(BitIdentical(got.data(), want.data(), m * n)) << "m=" << m;
      EXPECT_NE(got, y_exact) << "m=" << m;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllFormatsAndIsas, KQuantMatMulTest,
    ::testing::Combine(::testing::Values(QuantType::kQ5_0, QuantType::kQ5_1, QuantType::kQ2_K,
                                         QuantType::kQ3_K, QuantType::kQ4_K, QuantType::kQ5_K,
                                         QuantType::kQ6_K, QuantType::kIQ4_NL, QuantType::kIQ4_XS),
                       ::testing::Values(Isa::kAvx2, Isa::kAvx512)),
    [](const ::testing::TestParamInfo<std::tuple<QuantType, Isa>>& info) {
      return std::string(QuantTypeName(std::get<0>(info.param))) + "_" +
             IsaName(std::get<1>(info.param));
    });

}  // namespace
}  // namespace spanserve::kernels::cpu
