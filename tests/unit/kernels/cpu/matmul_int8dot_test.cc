// The integer dot-product path (MatMulPrecision::kInt8Dot, kernels/cpu/matmul_int8dot.h):
// bit for bit against a scalar model of its arithmetic, tightly against a double reference on
// the same quantized activations, the VNNI kernels against the AVX2 ones, batch and thread
// invariance, and its error against the exact path.
#include "kernels/cpu/matmul_int8dot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/dtype.h"
#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/matmul.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::BitIdentical;
using testing::Dequantized;
using testing::RandomFloats;
using testing::ScopedIsa;

constexpr QuantType kFormats[] = {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_1,
                                  QuantType::kQ5_0, QuantType::kQ5_1, QuantType::kQ4_K,
                                  QuantType::kQ5_K, QuantType::kQ6_K};

bool HasMin(QuantType q) {
  return q == QuantType::kQ4_1 || q == QuantType::kQ5_1 || q == QuantType::kQ4_K ||
         q == QuantType::kQ5_K;
}

// Elements of one block of the format: 32, or 256 for Q4_K, Q5_K and Q6_K.
int64_t Elems(QuantType q) { return QuantBlockElems(q); }

bool HasVnni() {
  ScopedIsa wide(Isa::kAvx512);
  return Int8DotUsesVnni();
}

// n rows of k / 32 blocks: every quant byte random (Q8_0 from -128 to 127; Q6_K's int8 scales
// too), f16 scales (and Q4_1 / Q5_1 / K-quant mins) valid values in ±scale.
std::vector<uint8_t> RandomBlocks(QuantType q, int64_t n, int64_t k, uint32_t seed,
                                  float scale = 0.05f) {
  const int64_t block_bytes = QuantBlockBytes(q);
  std::vector<uint8_t> bytes(n * k / Elems(q) * block_bytes);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(byte(rng));
  const int64_t d_at = q == QuantType::kQ6_K ? 208 : 0;  // Q6_K: d last
  for (int64_t b = 0; b < n * k / Elems(q); ++b) {       // Q4_K: d and dmin where d and m are
    const uint16_t d = F32ToF16(scale * unit(rng));
    std::memcpy(&bytes[b * block_bytes + d_at], &d, 2);
    if (HasMin(q)) {
      const uint16_t m = F32ToF16(scale * unit(rng));
      std::memcpy(&bytes[b * block_bytes + 2], &m, 2);
    }
  }
  return bytes;
}

// One row of activations quantized as matmul_int8dot.h specifies, in scalar code.
struct QuantRow {
  std::vector<int> q;
  std::vector<float> d, s;
};

QuantRow QuantizeReference(const float* x, int64_t k) {
  QuantRow r;
  for (int64_t b = 0; b < k / 32; ++b) {
    float amax = 0.0f;
    for (int p = 0; p < 32; ++p) amax = std::max(amax, std::fabs(x[32 * b + p]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int p = 0; p < 32; ++p) {
      const int q = static_cast<int>(std::nearbyint(x[32 * b + p] * id));  // nearest, ties even
      r.q.push_back(q);
      sum += q;
    }
    r.d.push_back(d);
    r.s.push_back(d * static_cast<float>(sum));
  }
  return r;
}

// The int8 offset o of a weight format's quants (matmul_int8dot.h, the record's base).
int Offset(QuantType q) {
  return q == QuantType::kQ8_0   ? 128
         : q == QuantType::kQ4_0 ? 8
         : q == QuantType::kQ5_0 ? 16
         : q == QuantType::kQ6_K ? 32
                                 : 0;
}

// Lane `lane` of a quad (matmul_int8dot.h): the quad's block t it covers and its eight elements
// p[0..3] (from the record's first 64 bytes) and p[4..7] (from the last 64).
void LaneElements(QuantType q, int lane, int* t, int p[8]) {
  const int c = lane / 4, l = lane % 4;
  int first, second;
  if (q == QuantType::kQ6_K) {  // within one half: 16η + 4(l % 2) and 8 more
    *t = c / 2 + 2 * (l / 2);
    first = 16 * (c % 2) + 4 * (l % 2);
    second = first + 8;
  } else {
    *t = c;
    first = 4 * l;
    second = 16 + 4 * l;
  }
  for (int i = 0; i < 4; ++i) {
    p[i] = first + i;
    p[4 + i] = second + i;
  }
}

// The byte of a record's q[128] that holds element e of the quad's block t.
int RecordByte(QuantType q, int t, int e) {
  if (q == QuantType::kQ6_K) {
    const int g = e / 8;  // 8-byte pieces: [block t, block t + 2] per 16 bytes
    return 64 * (g % 2) + 16 * (2 * (t % 2) + g / 2) + 8 * (t / 2) + e % 8;
  }
  return 64 * (e / 16) + 16 * t + e % 16;
}

// Block b of a weight row (K-quants: block b % 8 of super-block b / 8): its integer quants, the
// scales of its elements 0-15 (d[0]) and 16-31 (d[1]; the same but for Q6_K) and its min.
void WeightBlock(QuantType q, const uint8_t* row, int64_t b, int wq[32], float d[2], float* m) {
  if (q == QuantType::kQ6_K) {  // as kernels/cpu/dequant.cc decodes it
    const uint8_t* sb = row + b / 8 * QuantBlockBytes(q);
    const int j = static_cast<int>(b % 8);
    uint16_t h;
    std::memcpy(&h, sb + 208, 2);
    const float dd = F16ToF32(h);
    const auto* sc = reinterpret_cast<const int8_t*>(sb + 192);
    d[0] = dd * static_cast<float>(sc[2 * j]);
    d[1] = dd * static_cast<float>(sc[2 * j + 1]);
    *m = 0.0f;
    for (int p = 0; p < 32; ++p) {
      const int e = 32 * j + p, half = e / 128, r = e % 128;
      const int low = (sb[64 * half + r % 64] >> (4 * (r / 64))) & 0x0f;
      const int high = (sb[128 + 32 * half + r % 32] >> (2 * (r / 32))) & 3;
      wq[p] = (low | high << 4) - 32;
    }
    return;
  }
  if (q == QuantType::kQ4_K || q == QuantType::kQ5_K) {
    const uint8_t* sb = row + b / 8 * QuantBlockBytes(q);
    const int s = static_cast<int>(b % 8);
    uint16_t h;
    std::memcpy(&h, sb, 2);
    const float dd = F16ToF32(h);
    std::memcpy(&h, sb + 2, 2);
    const float dmin = F16ToF32(h);
    const uint8_t* sc = sb + 4;
    const int scale = s < 4 ? sc[s] & 63 : (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
    const int mn = s < 4 ? sc[s + 4] & 63 : (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    d[0] = d[1] = dd * static_cast<float>(scale);
    *m = -(dmin * static_cast<float>(mn));
    const bool q5 = q == QuantType::kQ5_K;
    for (int p = 0; p < 32; ++p) {
      wq[p] = (sb[(q5 ? 48 : 16) + 32 * (s / 2) + p] >> (4 * (s % 2))) & 0x0f;
      if (q5) wq[p] |= ((sb[16 + p] >> s) & 1) << 4;
    }
    return;
  }
  const uint8_t* block = row + b * QuantBlockBytes(q);
  std::fill(wq, wq + 32, 0);
  uint16_t h;
  std::memcpy(&h, block, 2);
  d[0] = d[1] = F16ToF32(h);
  *m = 0.0f;
  switch (q) {
    case QuantType::kQ8_0:
      for (int p = 0; p < 32; ++p) wq[p] = static_cast<int8_t>(block[2 + p]);
      return;
    case QuantType::kQ4_0:
      for (int p = 0; p < 16; ++p) {
        wq[p] = (block[2 + p] & 0x0f) - 8;
        wq[p + 16] = (block[2 + p] >> 4) - 8;
      }
      return;
    case QuantType::kQ4_1:
      std::memcpy(&h, block + 2, 2);
      *m = F16ToF32(h);
      for (int p = 0; p < 16; ++p) {
        wq[p] = block[4 + p] & 0x0f;
        wq[p + 16] = block[4 + p] >> 4;
      }
      return;
    case QuantType::kQ5_0:
    case QuantType::kQ5_1: {
      const bool q5_1 = q == QuantType::kQ5_1;
      if (q5_1) {
        std::memcpy(&h, block + 2, 2);
        *m = F16ToF32(h);
      }
      uint32_t qh;
      std::memcpy(&qh, block + (q5_1 ? 4 : 2), 4);
      const uint8_t* qs = block + (q5_1 ? 8 : 6);
      const int offset = q5_1 ? 0 : 16;
      for (int p = 0; p < 16; ++p) {
        wq[p] = ((qs[p] & 0x0f) | static_cast<int>((qh >> p) & 1) << 4) - offset;
        wq[p + 16] = ((qs[p] >> 4) | static_cast<int>((qh >> (p + 16)) & 1) << 4) - offset;
      }
      return;
    }
    default:
      break;
  }
  FAIL() << "not a quantized format";
}

struct Expected {
  float bits;        // the header's arithmetic, modelled in scalar code
  double exact;      // the same quantized product in double
  double magnitude;  // Σ |terms| of that sum: the scale of its f32 rounding
};

// y for one x row and one weight row, as matmul_int8dot.h specifies it.
Expected ModelInt8Dot(QuantType q, const QuantRow& x, const uint8_t* row, int64_t k,
                      const float* bias) {
  const bool q4_1 = HasMin(q);  // Q4_1, Q5_1, Q4_K or Q5_K
  float acc[16] = {}, mins[8] = {};
  Expected e{0.0f, bias != nullptr ? *bias : 0.0, bias != nullptr ? std::fabs(*bias) : 0.0};
  const int64_t blocks = k / 32;
  for (int64_t b0 = 0; b0 < blocks; b0 += 4) {
    // A partial quad's missing blocks: zero quants and scales.
    int wq[4][32] = {};
    float dw[4][2] = {}, mw[4] = {}, dx[4] = {}, sx[4] = {};
    const int* xq[4] = {};
    for (int64_t t = 0; t < 4 && b0 + t < blocks; ++t) {
      WeightBlock(q, row, b0 + t, wq[t], dw[t], &mw[t]);
      dx[t] = x.d[b0 + t];
      sx[t] = x.s[b0 + t];
      xq[t] = x.q.data() + 32 * (b0 + t);
    }
    for (int lane = 0; lane < 16; ++lane) {
      int t, p[8];
      LaneElements(q, lane, &t, p);
      const float c = dw[t][p[0] / 16] * dx[t];  // (Q6_K: the lane's half's scale)
      int64_t dot = 0;
      for (int el : p) {
        if (xq[t] != nullptr) dot += wq[t][el] * xq[t][el];
      }
      acc[lane] = std::fma(c, static_cast<float>(dot), acc[lane]);
      e.exact += static_cast<double>(c) * dot;
      e.magnitude += std::fabs(static_cast<double>(c) * dot);
    }
    if (q4_1) {
      for (int t = 0; t < 4; ++t) {
        mins[2 * t] = std::fma(dw[t][0], dx[t], mins[2 * t]);
        mins[2 * t + 1] = std::fma(mw[t], sx[t], mins[2 * t + 1]);
        e.exact += static_cast<double>(mw[t]) * sx[t];
        e.magnitude += std::fabs(static_cast<double>(mw[t]) * sx[t]);
      }
    }
  }
  float v[8];
  for (int l = 0; l < 8; ++l) v[l] = acc[l] + acc[8 + l];
  float s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
  if (q4_1) s = s + ((mins[1] + mins[3]) + (mins[5] + mins[7]));
  e.bits = bias != nullptr ? s + *bias : s;
  return e;
}

WeightMatrix Int8DotMatrix(QuantType q, const std::vector<uint8_t>& blocks, int64_t n, int64_t k) {
  WeightMatrix w{blocks.data(), DType::kF32, n, k, q};
  w.precision = MatMulPrecision::kInt8Dot;
  return w;
}

// Activations with a realistic spread: mostly N(0, 1), a few large outliers.
std::vector<float> Activations(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> x(count);
  for (float& v : x) v = pick(rng) == 0 ? 8.0f * normal(rng) : normal(rng);
  return x;
}

// The activations' quantization, and its layout (matmul_int8dot.h): per quad of blocks a
// record of their quants (elements 0-15 of each, then 16-31 of each; Q6_K: in its lanes'
// order), the integer dots' bases for each weight format, the per-lane d, and d, s of each
// block; zeros past the row.
TEST(QuantizeRowsInt8, MatchesTheScalarDefinition) {
  for (QuantType weights : kFormats) {
    const int offset = Offset(weights);
    for (int64_t k : {32, 64, 96, 128, 160, 576}) {
      std::vector<float> x = Activations(3 * k, static_cast<uint32_t>(k));
      std::fill(x.begin(), x.begin() + 32, 0.0f);  // an all-zero block: d = 0, q = 0
      x[k + 5] = 2.5f;                             // ties round to even ...
      x[k + 6] = -127.0f;                          // ... against this block's max
      x[k + 7] = 0.5f;
      const int64_t ldx = internal::Int8RowBytes(k);
      std::vector<uint8_t> out(3 * ldx, 0xff);
      internal::QuantizeRowsInt8(x.data(), 3, k, weights, out.data());
      const int64_t blocks = k / 32;
      for (int64_t i = 0; i < 3; ++i) {
        SCOPED_TRACE(::testing::Message() << QuantTypeName(weights) << " k=" << k << " row " << i);
        const QuantRow ref = QuantizeReference(x.data() + i * k, k);
        for (int64_t quad = 0; quad < (blocks + 3) / 4; ++quad) {
          const uint8_t* record = out.data() + i * ldx + quad * internal::kInt8QuadBytes;
          int32_t base[16];
          float dc[16], ds[8];
          std::memcpy(base, record + internal::kInt8QuadBase, sizeof(base));
          std::memcpy(dc, record + internal::kInt8QuadDc, sizeof(dc));
          std::memcpy(ds, record + internal::kInt8QuadDs, sizeof(ds));
          for (int t = 0; t < 4; ++t) {
            const int64_t b = 4 * quad + t;
            const bool real = b < blocks;
            for (int e = 0; e < 32; ++e) {
              const int8_t got = static_cast<int8_t>(record[RecordByte(weights, t, e)]);
              ASSERT_EQ(got, real ? ref.q[32 * b + e] : 0) << "block " << b << " element " << e;
            }
            ASSERT_EQ(ds[2 * t], real ? ref.d[b] : 0.0f);
            ASSERT_EQ(ds[2 * t + 1], real ? ref.s[b] : 0.0f);
          }
          for (int lane = 0; lane < 16; ++lane) {
            int t, p[8];
            LaneElements(weights, lane, &t, p);
            const int64_t b = 4 * quad + t;
            const bool real = b < blocks;
            int sum = 0;
            for (int e : p) {
              if (real) sum += ref.q[32 * b + e];
            }
            ASSERT_EQ(base[lane], -offset * sum) << "quad " << quad << " lane " << lane;
            ASSERT_EQ(dc[lane], real ? ref.d[b] : 0.0f) << "quad " << quad << " lane " << lane;
          }
        }
      }
    }
  }
}

class Int8DotTest : public ::testing::TestWithParam<std::tuple<QuantType, Isa>> {
 protected:
  void SetUp() override {
    if (std::get<1>(GetParam()) == Isa::kAvx512 && !HasVnni()) {
      GTEST_SKIP() << "this CPU has no AVX512_VNNI";
    }
    isa_.emplace(std::get<1>(GetParam()));
  }
  void TearDown() override { isa_.reset(); }
  QuantType quant() const { return std::get<0>(GetParam()); }

 private:
  std::optional<ScopedIsa> isa_;
};

// Every k from one block to SmolLM2's hidden size, n ragged against every micro-kernel width
// and the 24-row panel, batches of each micro-kernel height and beyond.
TEST_P(Int8DotTest, EqualsTheScalarModelBitForBit) {
  const QuantType q = quant();
  for (int64_t k = Elems(q); k <= std::max<int64_t>(576, 2 * Elems(q)); k += Elems(q)) {
    for (int64_t n : {1, 5, 13, 29, 50}) {
      const uint32_t seed = static_cast<uint32_t>(k * 100 + n);
      const std::vector<uint8_t> blocks = RandomBlocks(q, n, k, seed);
      const std::vector<float> bias = RandomFloats(n, seed + 1);
      const WeightVector bv{bias.data(), DType::kF32, n};
      const WeightMatrix w = Int8DotMatrix(q, blocks, n, k);
      const int64_t row_bytes = k / Elems(q) * QuantBlockBytes(q);
      for (int64_t m : {1, 2, 3, 4, 7}) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " n=" << n << " m=" << m);
        const std::vector<float> x = Activations(m * k, seed + 2);
        std::vector<float> y(m * n, -1.0f);
        const bool with_bias = (k / 32 + n) % 2 == 0;
        MatMul(x.data(), m, w, with_bias ? &bv : nullptr, y.data());
        for (int64_t i = 0; i < m; ++i) {
          const QuantRow xq = QuantizeReference(x.data() + i * k, k);
          for (int64_t j = 0; j < n; ++j) {
            const Expected e = ModelInt8Dot(q, xq, blocks.data() + j * row_bytes, k,
                                            with_bias ? &bias[j] : nullptr);
            ASSERT_TRUE(BitIdentical(&y[i * n + j], &e.bits, 1)) << "i=" << i << " j=" << j;
            // The integer dots are exact: only the f32 rounding of the scales' products and
            // of about k / 64 + 6 additions remains.
            ASSERT_NEAR(y[i * n + j], e.exact, 0x1p-24 * (k / 32 + 8) * e.magnitude + 1e-30);
          }
        }
      }
    }
  }
}

// Each row of an m-row product of w (n x k) equals the row alone, and the product is the
// same on 5 threads and on none.
void ExpectRowsIndependentOfTheBatchAndThreads(const WeightMatrix& w, int64_t m) {
  const int64_t n = w.rows, k = w.cols;
  const std::vector<float> x = Activations(m * k, 6);
  std::vector<float> batch(m * n), alone(n), other(m * n);
  MatMul(x.data(), m, w, nullptr, batch.data());
  for (int64_t i = 0; i < m; ++i) {
    MatMul(x.data() + i * k, 1, w, nullptr, alone.data());
    ASSERT_TRUE(BitIdentical(alone.data(), batch.data() + i * n, n)) << "m=" << m << " row " << i;
  }
  {
    ThreadPool pool(5);
    UsePool use(&pool);
    MatMul(x.data(), m, w, nullptr, other.data());
  }
  EXPECT_TRUE(BitIdentical(other.data(), batch.data(), m * n)) << "m=" << m;
  {
    UsePool none(nullptr);
    MatMul(x.data(), m, w, nullptr, other.data());
  }
  EXPECT_TRUE(BitIdentical(other.data(), batch.data(), m * n)) << "m=" << m;
}

TEST_P(Int8DotTest, RowsDoNotDependOnTheBatchOrTheThreads) {
  const QuantType q = quant();
  // k = 576: batches of 3 and 7 are quantized by every thread for itself, one of 37 once,
  // shared.
  const int64_t n = 61, k = Elems(q) == 256 ? 512 : 576;
  const std::vector<uint8_t> blocks = RandomBlocks(q, n, k, 5);
  const WeightMatrix w = Int8DotMatrix(q, blocks, n, k);
  for (int64_t m : {3, 7, 37}) ExpectRowsIndependentOfTheBatchAndThreads(w, m);
}

// Against the exact path on the same weights: the error of rounding x to 8 bits per block.
TEST_P(Int8DotTest, StaysCloseToTheExactPath) {
  const QuantType q = quant();
  const int64_t n = 64, k = 1536, m = 4;
  const std::vector<uint8_t> blocks = RandomBlocks(q, n, k, 8);
  const std::vector<float> wf = Dequantized(q, blocks, n * k);
  const std::vector<float> x = Activations(m * k, 9);
  const WeightMatrix w = Int8DotMatrix(q, blocks, n, k);
  const WeightMatrix exact_w{blocks.data(), DType::kF32, n, k, q};
  std::vector<float> y(m * n), exact(m * n);
  MatMul(x.data(), m, w, nullptr, y.data());
  MatMul(x.data(), m, exact_w, nullptr, exact.data());
  double worst = 0.0, sum_sq = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double magnitude = 0.0;
      for (int64_t p = 0; p < k; ++p) magnitude += std::fabs(x[i * k + p] * wf[j * k + p]);
      const double rel = std::fabs(y[i * n + j] - exact[i * n + j]) / magnitude;
      worst = std::max(worst, rel);
      sum_sq += rel * rel;
    }
  }
  EXPECT_LT(worst, 1e-2);
  EXPECT_LT(std::sqrt(sum_sq / (m * n)), 2e-3);
}

INSTANTIATE_TEST_SUITE_P(AllQuantTypesAndIsas, Int8DotTest,
                         ::testing::Combine(::testing::ValuesIn(kFormats),
                                            ::testing::Values(Isa::kAvx2, Isa::kAvx512)),
                         [](const ::testing::TestParamInfo<std::tuple<QuantType, Isa>>& info) {
                           return std::string(QuantTypeName(std::get<0>(info.param))) + "_" +
                                  (std::get<1>(info.param) == Isa::kAvx512 ? "vnni" : "avx2");
                         });

// The VNNI kernels against the AVX2 ones over shapes that reach every micro-kernel, tail
// and x tile of both (their micro-kernel widths differ), with and without a bias.
TEST(Int8Dot, VnniIsBitIdenticalToAvx2) {
  if (!HasVnni()) GTEST_SKIP() << "this CPU has no AVX512_VNNI";
  for (QuantType q : kFormats) {
    for (int64_t k : {32, 96, 256, 576, 2048}) {
      if (k % Elems(q) != 0) continue;
      for (int64_t n : {1, 7, 25, 53, 130}) {
        const std::vector<uint8_t> blocks = RandomBlocks(q, n, k, static_cast<uint32_t>(n + k));
        const std::vector<float> bias = RandomFloats(n, 3);
        const WeightVector bv{bias.data(), DType::kF32, n};
        const WeightMatrix w = Int8DotMatrix(q, blocks, n, k);
        for (int64_t m : {1, 2, 3, 4, 5, 8, 16, 37, 300}) {
          SCOPED_TRACE(::testing::Message()
                       << QuantTypeName(q) << " k=" << k << " n=" << n << " m=" << m);
          const std::vector<float> x = Activations(m * k, static_cast<uint32_t>(m));
          std::vector<float> vnni(m * n, -1.0f), avx2(m * n, -2.0f);
          {
            ScopedIsa wide(Isa::kAvx512);
            MatMul(x.data(), m, w, &bv, vnni.data());
          }
          {
            ScopedIsa narrow(Isa::kAvx2);
            MatMul(x.data(), m, w, &bv, avx2.data());
          }
          ASSERT_TRUE(BitIdentical(vnni.data(), avx2.data(), m * n));
        }
      }
    }
  }
}

// Packed weights (matmul_int8dot.h): Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 repacked 16 rows at a time,
// with whole-block integer dots and one f32 chain per output over the blocks.
class Int8PackedTest : public ::testing::TestWithParam<QuantType> {
 protected:
  void SetUp() override {
    if (!HasVnni()) GTEST_SKIP() << "this CPU has no AVX512_VNNI";
  }
  // w with its packed copy in *storage.
  static WeightMatrix Packed(QuantType q, const std::vector<uint8_t>& blocks, int64_t n, int64_t k,
                             std::vector<uint8_t>* storage) {
    WeightMatrix w = Int8DotMatrix(q, blocks, n, k);
    storage->assign(internal::Int8PackedBytes(q, n, k), 0xee);
    internal::PackInt8(w, storage->data());
    w.packed = storage->data();
    return w;
  }
};

// y for one x row and one weight row as the packed kernels compute it.
Expected ModelInt8Packed(QuantType q, const QuantRow& x, const uint8_t* row, int64_t k,
                         const float* bias) {
  float acc = 0.0f, mins = 0.0f;
  Expected e{0.0f, bias != nullptr ? *bias : 0.0, bias != nullptr ? std::fabs(*bias) : 0.0};
  for (int64_t b = 0; b < k / 32; ++b) {
    int wq[32];
    float dw[2], mw;
    WeightBlock(q, row, b, wq, dw, &mw);
    // Q6_K: the halves' dots, each with its own scale; the others: one dot, d_w[0] = d_w[1].
    const int halves = q == QuantType::kQ6_K ? 2 : 1;
    for (int h = 0; h < halves; ++h) {
      int64_t dot = 0;
      for (int p = 32 / halves * h; p < 32 / halves * (h + 1); ++p) {
        dot += static_cast<int64_t>(x.q[32 * b + p]) * wq[p];
      }
      const float c = dw[h] * x.d[b];
      acc = std::fma(c, static_cast<float>(dot), acc);
      e.exact += static_cast<double>(c) * static_cast<double>(dot);
      e.magnitude += std::fabs(static_cast<double>(c) * static_cast<double>(dot));
    }
    if (internal::Int8PackedHasMins(q)) mins = std::fma(mw, x.s[b], mins);
    e.exact += static_cast<double>(mw) * static_cast<double>(x.s[b]);
    e.magnitude += std::fabs(static_cast<double>(mw) * static_cast<double>(x.s[b]));
  }
  float y = internal::Int8PackedHasMins(q) ? acc + mins : acc;
  if (bias != nullptr) y = y + *bias;
  e.bits = y;
  return e;
}

// n ragged against the 16-row groups, m against the 4-row blocks of the VNNI kernel and the
// 16-row tiles of the AMX one (calls of 32 rows or more, where the CPU has AMX-INT8), k from
// one block to 576.
TEST_P(Int8PackedTest, EqualsTheModelBitForBit) {
  const QuantType q = GetParam();
  // K-quants: one and two super-blocks.
  const std::vector<int64_t> ks =
      Elems(q) == 256 ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{32, 96, 576};
  for (int64_t k : ks) {
    for (int64_t n : {1, 5, 16, 17, 40, 50}) {
      const uint32_t seed = static_cast<uint32_t>(k * 100 + n);
      const std::vector<uint8_t> blocks = RandomBlocks(q, n, k, seed);
      const std::vector<float> bias = RandomFloats(n, seed + 1);
      const WeightVector bv{bias.data(), DType::kF32, n};
      std::vector<uint8_t> storage;
      const WeightMatrix w = Packed(q, blocks, n, k, &storage);
      const int64_t row_bytes = k / Elems(q) * QuantBlockBytes(q);
      for (int64_t m : {1, 2, 3, 4, 7, 8, 17, 33, 50}) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " n=" << n << " m=" << m);
        const std::vector<float> x = Activations(m * k, seed + 2);
        std::vector<float> y(m * n, -1.0f);
        const bool with_bias = (k / 32 + n) % 2 == 0;
        MatMul(x.data(), m, w, with_bias ? &bv : nullptr, y.data());
        for (int64_t i = 0; i < m; ++i) {
          const QuantRow xq = QuantizeReference(x.data() + i * k, k);
          for (int64_t j = 0; j < n; ++j) {
            const Expected e = ModelInt8Packed(q, xq, blocks.data() + j * row_bytes, k,
                                               with_bias ? &bias[j] : nullptr);
            ASSERT_TRUE(BitIdentical(&y[i * n + j], &e.bits, 1)) << "i=" << i << " j=" << j;
            ASSERT_NEAR(y[i * n + j], e.exact, 0x1p-24 * (k / 16 + 8) * e.magnitude + 1e-30);
          }
        }
      }
    }
  }
}

TEST_P(Int8PackedTest, RowsDoNotDependOnTheBatchOrTheThreads) {
  const QuantType q = GetParam();
  const int64_t n = 61, k = Elems(q) == 256 ? 512 : 576;
  const std::vector<uint8_t> blocks = RandomBlocks(q, n, k, 5);
  std::vector<uint8_t> storage;
  const WeightMatrix w = Packed(q, blocks, n, k, &storage);
  // 3 and 16 rows take the VNNI kernel; 37 the AMX one where the CPU has AMX-INT8, whose rows
  // must then equal the VNNI kernel's rows computed alone.
  for (int64_t m : {3, 16, 37}) ExpectRowsIndependentOfTheBatchAndThreads(w, m);
}

INSTANTIATE_TEST_SUITE_P(PackedFormats, Int8PackedTest,
                         ::testing::Values(QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_1,
                                           QuantType::kQ5_0, QuantType::kQ5_1, QuantType::kQ4_K,
                                           QuantType::kQ5_K, QuantType::kQ6_K),
                         [](const ::testing::TestParamInfo<QuantType>& info) {
                           return std::string(QuantTypeName(info.param));
                         });

}  // namespace
}  // namespace spanserve::kernels::cpu
