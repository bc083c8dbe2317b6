// Dequantization kernels against a naive scalar reading of ggml's block layouts.
#include "kernels/cpu/dequant.h"

#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu {
namespace {

// Random blocks of `block_bytes` whose f16 scale fields (`halves` of them from byte
// `half_at`) are finite, or whose f32 scale at byte 0 is (`f32_scale`).
std::vector<uint8_t> RandomBlocks(int64_t blocks, int block_bytes, int half_at, int halves,
                                  bool f32_scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.5f, 0.5f);
  std::vector<uint8_t> out(blocks * block_bytes);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = out.data() + b * block_bytes;
    for (int i = 0; i < block_bytes; ++i) p[i] = static_cast<uint8_t>(byte(rng));
    for (int h = 0; h < halves; ++h) {
      const uint16_t v = F32ToF16(scale(rng));
      std::memcpy(p + half_at + 2 * h, &v, 2);
    }
    if (f32_scale) {
      const float v = scale(rng);
      std::memcpy(p, &v, 4);
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

// Q5_0 / Q5_1: the 5-bit value of element j (0..31), from qh (bit j) and the nibbles.
int Q5(const uint8_t* qh, const uint8_t* qs, int64_t j) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  return Nibble(qs, j) | static_cast<int>((h >> j) & 1) << 4;
}
float RefQ5_0(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 32) * 22;
  return Half(b) * static_cast<float>(Q5(b + 2, b + 6, i % 32) - 16);
}
float RefQ5_1(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 32) * 24;
  const float dq = Half(b) * static_cast<float>(Q5(b + 4, b + 8, i % 32));
  return dq + Half(b + 2);
}

// The K-quants, one element e of a 256-element super-block at a time, as ggml's
// dequantize_row_q*_K walks them (h = e / 128: which half; r = e % 128; j = e % 32).
float RefQ2_K(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 256) * 84;
  const int e = static_cast<int>(i % 256), h = e / 128, r = e % 128, j = e % 32;
  const uint8_t sc = b[e / 16];
  const int q = (b[16 + 32 * h + j] >> (2 * (r / 32))) & 3;
  const float dl = Half(b + 80) * static_cast<float>(sc & 15);
  const float ml = Half(b + 82) * static_cast<float>(sc >> 4);
  const float dq = dl * static_cast<float>(q);
  return dq - ml;
}
float RefQ3_K(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 256) * 110;
  const int e = static_cast<int>(i % 256), h = e / 128, r = e % 128, j = e % 32;
  // Scales: 16 six-bit values, low nibbles in bytes 0..7 (s < 8 low, s >= 8 high), the top
  // two bits in bytes 8..11, two bits per scale.
  const uint8_t* scales = b + 96;
  const int s = e / 16;
  const int low = s < 8 ? scales[s] & 15 : scales[s - 8] >> 4;
  const int high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
  const int sc = (low | high << 4) - 32;
  const int q2 = (b[32 + 32 * h + j] >> (2 * (r / 32))) & 3;
  const bool hbit = (b[j] >> (e / 32)) & 1;
  const int q = q2 - (hbit ? 0 : 4);
  const float dl = Half(b + 108) * static_cast<float>(sc);
  return dl * static_cast<float>(q);
}
// get_scale_min_k4 written out bit by bit.
void ScaleMinK4(const uint8_t* q, int s, int* sc, int* m) {
  if (s < 4) {
    *sc = q[s] & 0x3f;
    *m = q[s + 4] & 0x3f;
  } else {
    *sc = (q[s + 4] & 0x0f) | ((q[s - 4] & 0xc0) >> 2);
    *m = ((q[s + 4] & 0xf0) >> 4) | ((q[s] & 0xc0) >> 2);
  }
}
float RefQ4_K(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 256) * 144;
  const int e = static_cast<int>(i % 256), s = e / 32, j = e % 32;
  int sc, m;
  ScaleMinK4(b + 4, s, &sc, &m);
  const uint8_t byte = b[16 + 32 * (s / 2) + j];
  const int q = s % 2 == 0 ? byte & 15 : byte >> 4;
  const float dl = Half(b) * static_cast<float>(sc);
  const float ml = Half(b + 2) * static_cast<float>(m);
  const float dq = dl * static_cast<float>(q);
  return dq - ml;
}
float RefQ5_K(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 256) * 176;
  const int e = static_cast<int>(i % 256), s = e / 32, j = e % 32;
  int sc, m;
  ScaleMinK4(b + 4, s, &sc, &m);
  const uint8_t byte = b[48 + 32 * (s / 2) + j];
  const int q = (s % 2 == 0 ? byte & 15 : byte >> 4) + (((b[16 + j] >> s) & 1) != 0 ? 16 : 0);
  const float dl = Half(b) * static_cast<float>(sc);
  const float ml = Half(b + 2) * static_cast<float>(m);
  const float dq = dl * static_cast<float>(q);
  return dq - ml;
}
float RefQ6_K(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 256) * 210;
  const int e = static_cast<int>(i % 256), h = e / 128, r = e % 128, j = e % 32;
  const uint8_t lbyte = b[64 * h + r % 64];
  const int low = r < 64 ? lbyte & 15 : lbyte >> 4;
  const int high = (b[128 + 32 * h + j] >> (2 * (r / 32))) & 3;
  const int q = (low | high << 4) - 32;
  const float dl = Half(b + 208) * static_cast<float>(static_cast<int8_t>(b[192 + e / 16]));
  return dl * static_cast<float>(q);
}
float RefQ8_K(const uint8_t* blocks, int64_t i) {
  const uint8_t* b = blocks + (i / 256) * 292;
  float d;
  std::memcpy(&d, b, 4);
  return d * static_cast<float>(static_cast<int8_t>(b[4 + i % 256]));
}

struct Case {
  const char* name;
  int block_elems;
  int block_bytes;
  int half_at;  // byte offset of the first f16 scale field
  int halves;   // how many
  bool f32_scale;
  void (*kernel)(const void*, int64_t, float*);
  float (*ref)(const uint8_t*, int64_t);
};

class DequantTest : public ::testing::TestWithParam<Case> {};

TEST_P(DequantTest, MatchesNaiveReferenceBitForBit) {
  const Case& c = GetParam();
  for (const int64_t blocks : {1, 3, 97}) {
    const std::vector<uint8_t> data =
        RandomBlocks(blocks, c.block_bytes, c.half_at, c.halves, c.f32_scale, 7 + blocks);
    const int64_t n = blocks * c.block_elems;
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
  const std::vector<uint8_t> data =
      RandomBlocks(5, c.block_bytes, c.half_at, c.halves, c.f32_scale, 3);
  std::vector<uint8_t> shifted(data.size() + 1);
  std::memcpy(shifted.data() + 1, data.data(), data.size());
  const int64_t n = 5 * c.block_elems;
  std::vector<float> a(n), b(n);
  c.kernel(data.data(), n, a.data());
  c.kernel(shifted.data() + 1, n, b.data());
  EXPECT_EQ(a, b);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, DequantTest,
    ::testing::Values(Case{"Q8_0", 32, 34, 0, 1, false, DequantizeQ8_0, RefQ8_0},
                      Case{"Q4_0", 32, 18, 0, 1, false, DequantizeQ4_0, RefQ4_0},
                      Case{"Q4_1", 32, 20, 0, 2, false, DequantizeQ4_1, RefQ4_1},
                      Case{"Q5_0", 32, 22, 0, 1, false, DequantizeQ5_0, RefQ5_0},
                      Case{"Q5_1", 32, 24, 0, 2, false, DequantizeQ5_1, RefQ5_1},
                      Case{"Q2_K", 256, 84, 80, 2, false, DequantizeQ2_K, RefQ2_K},
                      Case{"Q3_K", 256, 110, 108, 1, false, DequantizeQ3_K, RefQ3_K},
                      Case{"Q4_K", 256, 144, 0, 2, false, DequantizeQ4_K, RefQ4_K},
                      Case{"Q5_K", 256, 176, 0, 2, false, DequantizeQ5_K, RefQ5_K},
                      Case{"Q6_K", 256, 210, 208, 1, false, DequantizeQ6_K, RefQ6_K},
                      Case{"Q8_K", 256, 292, 0, 0, true, DequantizeQ8_K, RefQ8_K}),
    [](const auto& info) { return std::string(info.param.name); });

// Every quantized block's scale is read through simd::kHalfToFloat: it must hold what F16C
// gives for each of the 65,536 patterns, bit for bit (subnormals, infinities, NaN payloads).
TEST(Dequant, HalfTableEqualsF16cForEveryPattern) {
  int mismatches = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float table = simd::kHalfToFloat[h];
    const float f16c = _cvtsh_ss(static_cast<uint16_t>(h));
    uint32_t a, b;
    std::memcpy(&a, &table, 4);
    std::memcpy(&b, &f16c, 4);
    if (a != b && ++mismatches <= 5)
      ADD_FAILURE() << std::hex << "f16 0x" << h << ": table 0x" << a << ", F16C 0x" << b;
  }
  EXPECT_EQ(mismatches, 0);
  uint8_t bytes[2] = {0x00, 0x3c};  // 1.0
  EXPECT_EQ(simd::HalfAt(bytes), 1.0f);
}

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

TEST(Dequant, KQuantKnownValues) {
  float out[256];
  const uint16_t half = F32ToF16(0.5f), one = F32ToF16(1.0f);
  // Q4_K: d = 0.5, dmin = 1; sub-block 0 has scale 3, min 2; sub-block 5 has scale 33
  // (low 4 bits 1 in byte 9, top 2 bits 2 in byte 1's bits 6..7) and min 0.
  uint8_t q4k[144] = {};
  std::memcpy(q4k, &half, 2);
  std::memcpy(q4k + 2, &one, 2);
  q4k[4 + 0] = 3;           // sc[0]
  q4k[4 + 4] = 2;           // m[0]
  q4k[4 + 9] = 0x01;        // sc[5] low bits
  q4k[4 + 1] = 0x80;        // sc[5] high bits (2 << 6)
  q4k[16 + 0] = 0x0f;       // element 0: q = 15 (low nibble of qs[0])
  q4k[16 + 64 + 7] = 0xa0;  // element 32·5 + 7: q = 10 (high nibble of qs[64 + 7])
  DequantizeQ4_K(q4k, 256, out);
  EXPECT_EQ(out[0], 0.5f * 3 * 15 - 2);  // 20.5
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[32 * 5 + 7], 0.5f * 33 * 10);
  // Q6_K: d = 0.5, scales[0] = -2, scales[15] = 3: element 0 has q = 0 - 32 (ql, qh zero);
  // element 255 has q = 15 | 3 << 4 = 63 → 31 (ql[127] high nibble, qh[63] bits 6..7).
  uint8_t q6k[210] = {};
  std::memcpy(q6k + 208, &half, 2);
  q6k[192] = static_cast<uint8_t>(-2);
  q6k[192 + 15] = 3;
  q6k[127] = 0xf0;
  q6k[128 + 63] = 0xc0;
  DequantizeQ6_K(q6k, 256, out);
  EXPECT_EQ(out[0], 0.5f * -2 * -32);
  EXPECT_EQ(out[255], 0.5f * 3 * 31);
  // Q3_K: d = 0.5; every scale is 0 - 32 = -32; element 0 with its hmask bit set has q = 0,
  // element 1 without it has q = -4, element 33 (hmask[1] bit 1 set, qs bits 2..3 = 3): 3.
  uint8_t q3k[110] = {};
  std::memcpy(q3k + 108, &half, 2);
  q3k[0] = 0x01;
  q3k[1] = 0x02;
  q3k[32 + 1] = 0x0c;
  DequantizeQ3_K(q3k, 256, out);
  EXPECT_EQ(out[0], 0.5f * -32 * 0);
  EXPECT_EQ(out[1], 0.5f * -32 * -4);
  EXPECT_EQ(out[33], 0.5f * -32 * 3);
  // Q2_K: d = 0.5, dmin = 1, scales[15] = 0x27 (scale 7, min 2); element 255 is bits 6..7
  // of qs[63].
  uint8_t q2k[84] = {};
  std::memcpy(q2k + 80, &half, 2);
  std::memcpy(q2k + 82, &one, 2);
  q2k[15] = 0x27;
  q2k[16 + 63] = 0xc0;
  DequantizeQ2_K(q2k, 256, out);
  EXPECT_EQ(out[255], 0.5f * 7 * 3 - 2);
  EXPECT_EQ(out[0], 0.0f);
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
