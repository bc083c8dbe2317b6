// The GGUF reader: valid v2/v3 files, every metadata type, typed accessors, and broken files
// (each error names the file and the key or tensor at fault).
#include "runtime/gguf/gguf_file.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/gguf/dequantize.h"

namespace spanserve::gguf {
namespace {

using testing::GgufWriter;
using ::testing::HasSubstr;

constexpr char kName[] = "test.gguf";

absl::StatusOr<std::unique_ptr<GgufFile>> ParseBytes(const std::vector<uint8_t>& bytes) {
  return GgufFile::Parse(bytes, kName);
}

// A valid file: metadata of several types and two f32 tensors.
GgufWriter Valid(uint32_t version = 3) {
  GgufWriter w(version);
  w.Str("general.architecture", "llama");
  w.U32("llama.block_count", 2);
  w.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.Bool("tokenizer.ggml.add_bos_token", true);
  w.StrArray("tokenizer.ggml.tokens", {"a", "b", "c"});
  w.I32Array("tokenizer.ggml.token_type", {1, 3, 6});
  w.AddF32("a.weight", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  w.AddF32("b.weight", {3}, {9, 10, 11});
  return w;
}

void ExpectError(const absl::StatusOr<std::unique_ptr<GgufFile>>& r,
                 std::initializer_list<const char*> parts) {
  ASSERT_FALSE(r.ok()) << "parsed a broken file";
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(kName));
  for (const char* p : parts) EXPECT_THAT(std::string(r.status().message()), HasSubstr(p));
}

TEST(GgufFile, ParsesVersions2And3) {
  for (const uint32_t version : {2u, 3u}) {
    const std::vector<uint8_t> bytes = Valid(version).Build();
    auto f = ParseBytes(bytes);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ((*f)->version(), version);
    EXPECT_EQ((*f)->alignment(), 32u);
    EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
    EXPECT_EQ(*(*f)->GetInt("llama.block_count"), 2);
    EXPECT_FLOAT_EQ(static_cast<float>(*(*f)->GetFloat("llama.attention.layer_norm_rms_epsilon")),
                    1e-5f);
    EXPECT_TRUE(*(*f)->GetBool("tokenizer.ggml.add_bos_token"));
    EXPECT_EQ(*(*f)->GetStringArray("tokenizer.ggml.tokens"),
              (std::vector<std::string_view>{"a", "b", "c"}));
    EXPECT_EQ(*(*f)->GetIntArray("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 3, 6}));
    ASSERT_EQ((*f)->tensors().size(), 2u);
    const TensorInfo* a = (*f)->FindTensor("a.weight");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->ne, (std::vector<int64_t>{4, 2}));
    EXPECT_EQ(a->TorchShape(), (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(a->nbytes, 32);
    EXPECT_EQ(
        (reinterpret_cast<uintptr_t>(a->data) - reinterpret_cast<uintptr_t>(bytes.data())) % 32,
        0u);
    std::vector<float> out(3);
    ASSERT_TRUE(DequantizeToF32(**f, *(*f)->FindTensor("b.weight"), out).ok());
    EXPECT_EQ(out, (std::vector<float>{9, 10, 11}));
  }
}

TEST(GgufFile, ReadsEveryValueTypeAndNestedArrays) {
  GgufWriter w;
  w.Kv("u8", 0, {200});
  w.Kv("i8", 1, {0xfe});
  w.Kv("u16", 2, GgufWriter::Le(uint16_t{60000}));
  w.Kv("i16", 3, GgufWriter::Le(int16_t{-3000}));
  w.U32("u32", 4000000000u);
  w.I32("i32", -5);
  w.F32("f32", 0.25f);
  w.Bool("bool", false);
  w.Str("string", "héllo");
  w.Kv("u64", 10, GgufWriter::Le(uint64_t{1} << 40));
  w.Kv("i64", 11, GgufWriter::Le(int64_t{-7}));
  w.Kv("f64", 12, GgufWriter::Le(0.125));
  // array[array[i32]]: [[1, 2], [3]]
  std::vector<uint8_t> nested = GgufWriter::Le(uint32_t{9});
  GgufWriter::Append(nested, GgufWriter::Le(uint64_t{2}));
  for (const std::vector<int32_t>& inner : {std::vector<int32_t>{1, 2}, std::vector<int32_t>{3}}) {
    GgufWriter::Append(nested, GgufWriter::Le(uint32_t{5}));
    GgufWriter::Append(nested, GgufWriter::Le(static_cast<uint64_t>(inner.size())));
    for (const int32_t x : inner) GgufWriter::Append(nested, GgufWriter::Le(x));
  }
  w.Kv("nested", 9, nested);
  w.F32Array("floats", {0.5f, -1.5f});
  const std::vector<uint8_t> bytes = w.Build();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(*g.GetInt("u8"), 200);
  EXPECT_EQ(*g.GetInt("i8"), -2);
  EXPECT_EQ(*g.GetInt("u16"), 60000);
  EXPECT_EQ(*g.GetInt("i16"), -3000);
  EXPECT_EQ(*g.GetInt("u32"), 4000000000LL);
  EXPECT_EQ(*g.GetInt("i32"), -5);
  EXPECT_EQ(*g.GetFloat("f32"), 0.25);
  EXPECT_FALSE(*g.GetBool("bool"));
  EXPECT_EQ(*g.GetString("string"), "héllo");
  EXPECT_EQ(*g.GetInt("u64"), int64_t{1} << 40);
  EXPECT_EQ(*g.GetInt("i64"), -7);
  EXPECT_EQ(*g.GetFloat("f64"), 0.125);
  EXPECT_EQ(*g.GetFloatArray("floats"), (std::vector<float>{0.5f, -1.5f}));
  const Value* n = g.Find("nested");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->TypeName(), "array[array[i32]]");
  ASSERT_EQ(n->arrays.size(), 2u);
  EXPECT_EQ(n->arrays[0].count, 2u);
  EXPECT_EQ(n->arrays[1].count, 1u);
  EXPECT_TRUE(g.tensors().empty());
}

TEST(GgufFile, TypedAccessorsNameKeyAndBothTypes) {
  const std::vector<uint8_t> bytes = Valid().Build();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok());
  auto s = (*f)->GetString("llama.block_count");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("'llama.block_count' is u32"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("expected string"));
  auto i = (*f)->GetInt("tokenizer.ggml.tokens");
  ASSERT_FALSE(i.ok());
  EXPECT_THAT(std::string(i.status().message()), HasSubstr("array[string]"));
  auto missing = (*f)->GetInt("llama.context_length");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("llama.context_length"));
}

TEST(GgufFile, TruncatedAtEveryRegion) {
  const std::vector<uint8_t> bytes = Valid().Build();
  auto whole = ParseBytes(bytes);
  ASSERT_TRUE(whole.ok());
  // In the magic, the version, the counts, the metadata, the tensor infos, the data.
  for (const size_t cut : {size_t{2}, size_t{6}, size_t{14}, size_t{30}, size_t{60}, size_t{150},
                           bytes.size() - 300, bytes.size() - 40, bytes.size() - 24}) {
    ASSERT_LT(cut, bytes.size());
    const std::vector<uint8_t> part(bytes.begin(), bytes.begin() + cut);
    auto r = ParseBytes(part);
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(kName)) << cut;
    const std::string m(r.status().message());
    EXPECT_TRUE(m.find("truncated") != std::string::npos ||
                m.find("too short") != std::string::npos)
        << "cut at " << cut << ": " << m;
  }
  // A cut in the data names the tensor that no longer fits.
  const std::vector<uint8_t> part(bytes.begin(), bytes.end() - 24);
  ExpectError(ParseBytes(part), {"tensor 'b.weight'", "truncated"});
}

TEST(GgufFile, RejectsWrongMagicAndVersions) {
  GgufWriter w = Valid();
  w.magic = 0x4c4d4747;  // "GGML"
  ExpectError(ParseBytes(w.Build()), {"bad magic \"GGML\"", "expected \"GGUF\""});
  for (const uint32_t version : {1u, 4u}) {
    GgufWriter v = Valid(version);
    ExpectError(ParseBytes(v.Build()),
                {absl::StrCat("unsupported GGUF version ", version).c_str(), "supported: 2, 3"});
  }
}

TEST(GgufFile, RejectsImpossibleCounts) {
  GgufWriter w = Valid();
  w.kv_count_override = uint64_t{1} << 60;
  ExpectError(ParseBytes(w.Build()), {"kv_count"});
  GgufWriter t = Valid();
  t.tensor_count_override = uint64_t{1} << 60;
  ExpectError(ParseBytes(t.Build()), {"tensor_count"});
}

TEST(GgufFile, RejectsBadStringsAndArrays) {
  GgufWriter w;
  std::vector<uint8_t> huge = GgufWriter::Le(uint64_t{1} << 40);  // a string length
  w.Kv("general.name", 8, huge);
  ExpectError(ParseBytes(w.Build()), {"metadata key 'general.name'", "string length"});
  GgufWriter a;
  std::vector<uint8_t> arr = GgufWriter::Le(uint32_t{4});
  GgufWriter::Append(arr, GgufWriter::Le(uint64_t{1} << 40));
  a.Kv("tokenizer.ggml.token_type", 9, arr);
  ExpectError(ParseBytes(a.Build()), {"metadata key 'tokenizer.ggml.token_type'", "array of"});
  GgufWriter t;
  t.Kv("x", 13, {0});
  ExpectError(ParseBytes(t.Build()), {"metadata key 'x'", "unknown value type 13"});
  GgufWriter b;
  b.Kv("flag", 7, {2});
  ExpectError(ParseBytes(b.Build()), {"metadata key 'flag'", "bool value 2"});
}

TEST(GgufFile, RejectsDuplicates) {
  GgufWriter w = Valid();
  w.U32("llama.block_count", 3);
  ExpectError(ParseBytes(w.Build()), {"duplicate metadata key 'llama.block_count'"});
  GgufWriter t = Valid();
  t.AddF32("a.weight", {1}, {0});
  ExpectError(ParseBytes(t.Build()), {"duplicate tensor 'a.weight'"});
}

TEST(GgufFile, RejectsBadTensorInfos) {
  {
    GgufWriter w = Valid();
    w.AddTensor({"weird", {32}, 99, std::vector<uint8_t>(32), std::nullopt});
    ExpectError(ParseBytes(w.Build()), {"tensor 'weird'", "unknown tensor type 99"});
  }
  {
    GgufWriter w = Valid();
    w.AddTensor({"five_d", {1, 1, 1, 1, 1}, 0, std::vector<uint8_t>(4), std::nullopt});
    ExpectError(ParseBytes(w.Build()), {"tensor 'five_d'", "5 dimensions", "1 to 4"});
  }
  {
    GgufWriter w = Valid();
    w.AddTensor({"empty", {4, 0}, 0, {}, std::nullopt});
    ExpectError(ParseBytes(w.Build()), {"tensor 'empty'", "ne[1] = 0"});
  }
  {
    GgufWriter w = Valid();
    w.AddTensor({"q", {48}, 8, std::vector<uint8_t>(68), std::nullopt});  // Q8_0, 48 % 32 != 0
    ExpectError(ParseBytes(w.Build()), {"tensor 'q'", "not a multiple of Q8_0's block size 32"});
  }
  {
    GgufWriter w = Valid();
    w.AddTensor({"huge", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, {}, uint64_t{0}});
    ExpectError(ParseBytes(w.Build()), {"tensor 'huge'", "overflows"});
  }
}

TEST(GgufFile, RejectsMisplacedTensorData) {
  {
    GgufWriter w = Valid();
    w.AddTensor({"far", {8}, 0, {}, uint64_t{1} << 20});
    ExpectError(ParseBytes(w.Build()), {"tensor 'far'", "ends beyond"});
  }
  {
    GgufWriter w = Valid();
    w.AddTensor({"odd", {8}, 0, std::vector<uint8_t>(32), uint64_t{64 + 4}});
    ExpectError(ParseBytes(w.Build()), {"tensor 'odd'", "not a multiple of the alignment 32"});
  }
  {
    GgufWriter w = Valid();
    w.AddTensor({"over", {8}, 0, std::vector<uint8_t>(32), uint64_t{0}});  // a.weight is there
    ExpectError(ParseBytes(w.Build()), {"tensor 'over'", "overlaps tensor 'a.weight'"});
  }
}

TEST(GgufFile, HonoursAndValidatesGeneralAlignment) {
  GgufWriter w = Valid();
  w.U32("general.alignment", 64);
  w.alignment = 64;
  const std::vector<uint8_t> bytes = w.Build();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 64u);
  std::vector<float> out(3);
  ASSERT_TRUE(DequantizeToF32(**f, *(*f)->FindTensor("b.weight"), out).ok());
  EXPECT_EQ(out, (std::vector<float>{9, 10, 11}));

  GgufWriter bad = Valid();
  bad.U32("general.alignment", 48);
  ExpectError(ParseBytes(bad.Build()), {"general.alignment", "power of two"});
  GgufWriter typed = Valid();
  typed.I32("general.alignment", 32);
  ExpectError(ParseBytes(typed.Build()), {"general.alignment", "is i32, expected u32"});
}

TEST(GgufFile, UnsupportedTypeIsUnimplementedAtDequantization) {
  GgufWriter w = Valid();
  w.AddTensor(
      {"blk.0.ffn_up.weight", {256}, 16, std::vector<uint8_t>(66), std::nullopt});  // IQ2_XXS
  const std::vector<uint8_t> bytes = w.Build();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();  // a known type: the file itself is fine
  std::vector<float> out(256);
  const absl::Status s = DequantizeToF32(**f, *(*f)->FindTensor("blk.0.ffn_up.weight"), out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'blk.0.ffn_up.weight'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("IQ2_XXS"));
}

TEST(GgufFile, SurvivesRandomCorruption) {
  // Flipped bytes and cuts anywhere: every parse either succeeds or returns an error; none
  // reads out of bounds (run under the debug preset's AddressSanitizer to see that).
  const std::vector<uint8_t> valid = Valid().Build();
  std::mt19937 rng(42);
  int rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> bytes = valid;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    if (trial % 3 == 0) bytes.resize(rng() % bytes.size());
    auto r = ParseBytes(bytes);
    if (!r.ok()) {
      ++rejected;
      EXPECT_THAT(std::string(r.status().message()), HasSubstr(kName));
    }
  }
  EXPECT_GT(rejected, 1000);
}

TEST(GgufFile, OpenNamesMissingFile) {
  auto f = GgufFile::Open("/nonexistent/model.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace spanserve::gguf
