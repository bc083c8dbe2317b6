// Dequantization kernels against a naive scalar reading of ggml's block layouts.
#include "kernels/cpu/dequant.h"

#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"

namespace spanserve::kernels::cpu {
namespace {

// Random blocks of `block_bytes` whose f16 scale fields (the first `halves`) are finite.
std::vector<uint8_t> RandomBlocks(int64_t blocks, int block_bytes, int halves, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.5f, 0.5f);
  std::vector<uint8_t> out(blocks * block_bytes);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = out.data() + b * block_bytes;
    for (int i = 0; i < block_bytes; ++i) p[i] = static_cast<uint8_t>(byte(rng));
    for (int h = 0; h < halves; ++h) {
      const uint16_t v = F32ToF16(scale(rng));
      std::memcpy(p + 2 * h, &v, 2);
    }
  }
  return out;
}

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// The naive references: one element at a time, straight from the layout description.
float RefQ8_0(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 32) * 34;
  return Half(b) * static_cast<float>(static_cast<int8_t>(b[2 + i % 32]));
}
int Nibble(const uint8_t* qs, int64_t j) { return j < 16 ? qs[j] & 0xf : qs[j - 16] >> 4; }
float RefQ4_0(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 32) * 18;
  return Half(b) * static_cast<float>(Nibble(b + 2, i % 32) - 8);
}
float RefQ4_1(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 32) * 20;
  const float dq = Half(b) * static_cast<float>(Nibble(b + 4, i % 32));
  return dq + Half(b + 2);
}

struct Case {
  const char* name;
  int block_bytes;
  int halves;
  void (*kernel)(const void*, int64_t, float*);
  float (*ref)(const uint8_t*, int64_t);
};

class DequantTest : public ::testing::TestWithParam<Case> {};

TEST_P(DequantTest, MatchesNaiveReferenceBitForBit) {
  const Case& c = GetParam();
  for (const int64_t blocks : {1, 3, 97}) {
    const std::vector<uint8_t> data = RandomBlocks(blocks, c.block_bytes, c.halves, 7 + blocks);
    const int64_t n = blocks * 32;
    std::vector<float> out(n + 1, -12345.0f);
    c.kernel(data.data(), n, out.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(out[i], c.ref(data.data(), i)) << c.name << " element " << i;
    }
    EXPECT_EQ(out[n], -12345.0f) << "wrote past the end";
  }
}

TEST_P(DequantTest, UnalignedInput) {
  const Case& c = GetParam();
  const std::vector<uint8_t> data = RandomBlocks(5, c.block_bytes, c.halves, 3);
  std::vector<uint8_t> shifted(data.size() + 1);
  std::memcpy(shifted.data() + 1, data.data(), data.size());
  std::vector<float> a(160), b(160);
  c.kernel(data.data(), 160, a.data());
  c.kernel(shifted.data() + 1, 160, b.data());
  EXPECT_EQ(a, b);
}

INSTANTIATE_TEST_SUITE_P(Formats, DequantTest,
                         ::testing::Values(Case{"Q8_0", 34, 1, DequantizeQ8_0, RefQ8_0},
                                           Case{"Q4_0", 18, 1, DequantizeQ4_0, RefQ4_0},
                                           Case{"Q4_1", 20, 2, DequantizeQ4_1, RefQ4_1}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Dequant, KnownValues) {
  // Q4_0 with d = 0.5: nibble 0 -> -4, 15 -> 3.5; element 16 reads the high nibble of qs[0].
  uint8_t q40[18] = {};
  const uint16_t half = F32ToF16(0.5f);
  std::memcpy(q40, &half, 2);
  q40[2] = 0xf0;  // low nibble 0 (element 0), high nibble 15 (element 16)
  float out[32];
  DequantizeQ4_0(q40, 32, out);
  EXPECT_EQ(out[0], -4.0f);
  EXPECT_EQ(out[16], 3.5f);
  EXPECT_EQ(out[1], -4.0f);
  // Q4_1 with d = 0.5, m = -1: nibble 15 -> 6.5.
  uint8_t q41[20] = {};
  const uint16_t minus_one = F32ToF16(-1.0f);
  std::memcpy(q41, &half, 2);
  std::memcpy(q41 + 2, &minus_one, 2);
  q41[4 + 15] = 0x0f;  // element 15
  DequantizeQ4_1(q41, 32, out);
  EXPECT_EQ(out[15], 6.5f);
  EXPECT_EQ(out[31], -1.0f);
  // Q8_0: -128 * 0.5.
  uint8_t q80[34] = {};
  std::memcpy(q80, &half, 2);
  q80[2 + 31] = 0x80;
  DequantizeQ8_0(q80, 32, out);
  EXPECT_EQ(out[31], -64.0f);
}

TEST(Dequant, WidenToF32) {
  const std::vector<float> v = {1.5f, -2.25f, 65504.0f, 0.0f, 3.0e-5f, 7, 8, 9, 10};
  std::vector<uint16_t> h(v.size()), bf(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    h[i] = F32ToF16(v[i]);
    bf[i] = F32ToBf16(v[i]);
  }
  std::vector<float> out(v.size());
  WidenToF32(h.data(), DType::kF16, static_cast<int64_t>(v.size()), out.data());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(out[i], F16ToF32(h[i]));
  WidenToF32(bf.data(), DType::kBF16, static_cast<int64_t>(v.size()), out.data());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(out[i], Bf16ToF32(bf[i]));
  WidenToF32(v.data(), DType::kF32, static_cast<int64_t>(v.size()), out.data());
  EXPECT_EQ(out, v);
}

}  // namespace
}  // namespace spanserve::kernels::cpu
