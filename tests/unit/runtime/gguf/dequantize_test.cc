// Dequantization of a GGUF written by the Python `gguf` package against that package's own
// gguf.quants.dequantize (tests/data/gguf, tools/golden/make_gguf_test_data.py): bit-exact.
#include "runtime/gguf/dequantize.h"

#include <fstream>
#include <string>
#include <vector>

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
  EXPECT_EQ(checked, 6);
}

TEST(Dequantize, RefusesKQuantsByName) {
  auto f = GgufFile::Open(kDir + "dequant.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo* info = (*f)->FindTensor("q4_k");
  ASSERT_NE(info, nullptr);
  std::vector<float> out(info->numel());
  const absl::Status s = DequantizeToF32(**f, *info, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("tensor 'q4_k' has type Q4_K"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("dequant.gguf"));
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
