// Dequantization of a GGUF written by the Python `gguf` package against that package's own
// gguf.quants.dequantize (tests/data/gguf, tools/golden/make_gguf_test_data.py): bit-exact,
// for every type DequantizeToF32 handles (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and
// the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, and IQ4_NL, IQ4_XS).
#include "runtime/gguf/dequantize.h"

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/thread_pool.h"
#include "gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/gguf/gguf_file.h"

namespace spanserve::gguf {
namespace {

const std::string kDir = std::string(SPANSERVE_TEST_DATA) + "/gguf/";

TEST(Dequantize, MatchesPythonGgufPackageBitForBit) {
  auto f = GgufFile::Open(kDir + "dequant.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  std::ifstream in(kDir + "dequant.json");
  ASSERT_TRUE(in);
  const nlohmann::json want = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& [name, t] : want.at("tensors").items()) {
    const TensorInfo* info = (*f)->FindTensor(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(TensorTypeName(info->type), t.at("type").get<std::string>());
    EXPECT_EQ(info->ne, t.at("ne").get<std::vector<int64_t>>());
    const auto values = t.at("values").get<std::vector<float>>();
    std::vector<float> out(info->numel());
    ASSERT_TRUE(DequantizeToF32(**f, *info, out).ok()) << name;
    ASSERT_EQ(out.size(), values.size());
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_EQ(out[i], values[i]) << name << " element " << i;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 16);
}

TEST(Dequantize, RefusesUnsupportedTypesByName) {
  auto f = GgufFile::Open(kDir + "dequant.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* info = (*f)->FindTensor("iq2_xxs");
  ASSERT_NE(info, nullptr);
  EXPECT_FALSE(CanDequantize(info->type));
  std::vector<float> out(info->numel());
  const absl::Status s = DequantizeToF32(**f, *info, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("tensor 'iq2_xxs' has type IQ2_XXS"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("dequant.gguf"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("Q4_K"));  // in "supported: ..."
}

// A K-quant tensor longer than one parallel chunk (2^16 elements) and not a whole number of
// chunks, made of 7 distinct super-blocks repeated (a chunk of 256 super-blocks starts
// mid-period): every element equals that of the one-super-block tensor holding its block, so
// each chunk read its own super-blocks.
TEST(Dequantize, KQuantsSpanningSeveralChunks) {
  // The chunks are split over three threads, as a load splits them over its pool.
  ThreadPool pool(3);
  UsePool use(&pool);
  struct Case {
    TensorType type;
    int block_bytes;
    std::vector<int> half_offsets;  // the f16 scale fields of a super-block
  };
  const Case cases[] = {{TensorType::kQ4_K, 144, {0, 2}},
                        {TensorType::kQ6_K, 210, {208}},
                        {TensorType::kQ8_K, 292, {}}};
  constexpr int kPeriod = 7;
  for (const Case& c : cases) {
    const int64_t blocks = 2 * 65536 / 256 + 3;
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> scale(-0.1f, 0.1f);
    std::vector<std::vector<uint8_t>> distinct(kPeriod, std::vector<uint8_t>(c.block_bytes));
    for (std::vector<uint8_t>& block : distinct) {
      for (uint8_t& b : block) b = static_cast<uint8_t>(rng());
      for (const int at : c.half_offsets) {
        const uint16_t h = F32ToF16(scale(rng));
        std::memcpy(&block[at], &h, 2);
      }
      if (c.type == TensorType::kQ8_K) {
        const float d = scale(rng);
        std::memcpy(block.data(), &d, 4);
      }
    }
    testing::GgufWriter w;
    w.Str("general.architecture", "llama");
    std::vector<uint8_t> data;
    for (int64_t i = 0; i < blocks; ++i) {
      data.insert(data.end(), distinct[i % kPeriod].begin(), distinct[i % kPeriod].end());
    }
    w.AddTensor({"t",
                 {static_cast<uint64_t>(blocks * 256)},
                 static_cast<uint32_t>(c.type),
                 data,
                 std::nullopt});
    for (int p = 0; p < kPeriod; ++p) {
      w.AddTensor(
          {absl::StrCat("b", p), {256}, static_cast<uint32_t>(c.type), distinct[p], std::nullopt});
    }
    const std::vector<uint8_t> bytes = w.Build();
    auto f = GgufFile::Parse(bytes, "chunks.gguf");
    ASSERT_TRUE(f.ok()) << f.status();
    std::vector<std::vector<float>> want(kPeriod, std::vector<float>(256));
    for (int p = 0; p < kPeriod; ++p) {
      ASSERT_TRUE(DequantizeToF32(**f, *(*f)->FindTensor(absl::StrCat("b", p)), want[p]).ok());
    }
    std::vector<float> out(blocks * 256);
    ASSERT_TRUE(DequantizeToF32(**f, *(*f)->FindTensor("t"), out).ok());
    for (int64_t i = 0; i < blocks * 256; ++i) {
      ASSERT_EQ(out[i], want[(i / 256) % kPeriod][i % 256])
          << TensorTypeName(c.type) << " element " << i;
    }
  }
}

TEST(Dequantize, RejectsWrongOutputSize) {
  auto f = GgufFile::Open(kDir + "dequant.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<float> out(3);
  EXPECT_EQ(DequantizeToF32(**f, *(*f)->FindTensor("q8_0"), out).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace spanserve::gguf
