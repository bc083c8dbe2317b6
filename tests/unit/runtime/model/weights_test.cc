#include "runtime/model/weights.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve::model {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

struct TestTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

std::string F32Bytes(const std::vector<float>& v) { return Bytes(v); }

std::string Bf16Bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (const float f : v) h.push_back(F32ToBf16(f));
  return Bytes(h);
}

std::string F16Bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (const float f : v) h.push_back(F32ToF16(f));
  return Bytes(h);
}

// A safetensors file from a raw header and data buffer. `pad` pads the header with spaces
// to a multiple of 8 bytes, as the reference writer does; without it the data buffer
// starts at whatever offset the header leaves.
std::string SafetensorsFile(const json& header, const std::string& data, bool pad = true) {
  std::string text = header.dump();
  if (pad) text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text + data;
}

// The header for `tensors` stored back to back, with their data buffer.
std::pair<json, std::string> Pack(const std::vector<TestTensor>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const TestTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  return {header, data};
}

std::string SafetensorsFile(const std::vector<TestTensor>& tensors, bool pad = true) {
  const auto [header, data] = Pack(tensors);
  return SafetensorsFile(header, data, pad);
}

class WeightStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            (std::string("weights_test_") + info->name() + "_" + std::to_string(::getpid())))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  // Opens dir_ with a model.safetensors holding `contents`, expecting an error.
  absl::Status OpenError(const std::string& contents) {
    Write("model.safetensors", contents);
    const absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
    EXPECT_FALSE(store.ok());
    return store.status();
  }

  std::string dir_;
};

const TestTensor kA{"a", "F32", {2, 3}, F32Bytes({1, 2, 3, 4, 5, 6})};
const TestTensor kB{"b", "BF16", {4}, Bf16Bytes({1, 2, 3, 4})};

TEST_F(WeightStoreTest, ReadsBackF32Bf16F16Values) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3e-3f, 1e20f};
  const std::vector<float> bf16 = {1.0f, -0.5f, 3.0f, 256.0f, -1e-3f, 7.0f};
  const std::vector<float> f16 = {0.5f, -65504.0f, 1.0f / 1024, 2.0f};
  Write("model.safetensors", SafetensorsFile({{"w.f32", "F32", {4}, F32Bytes(f32)},
                                              {"w.bf16", "BF16", {2, 3}, Bf16Bytes(bf16)},
                                              {"w.f16", "F16", {2, 2}, F16Bytes(f16)}}));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  WeightStore& w = **store;
  EXPECT_EQ(w.total_bytes(), 4 * 4 + 6 * 2 + 4 * 2);
  EXPECT_EQ(w.Names(), (std::vector<std::string>{"w.bf16", "w.f16", "w.f32"}));

  const std::vector<int64_t> s4 = {4};
  absl::StatusOr<TensorView> a = w.Get("w.f32", s4);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->numel(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(static_cast<const float*>(a->data)[i], f32[i]);

  const std::vector<int64_t> s23 = {2, 3};
  absl::StatusOr<TensorView> b = w.Get("w.bf16", s23);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->dtype, DType::kBF16);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(Bf16ToF32(static_cast<const uint16_t*>(b->data)[i]), Bf16ToF32(F32ToBf16(bf16[i])));
  }

  const std::vector<int64_t> s22 = {2, 2};
  absl::StatusOr<TensorView> c = w.Get("w.f16", s22);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dtype, DType::kF16);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(F16ToF32(static_cast<const uint16_t*>(c->data)[i]), f16[i]);
  EXPECT_TRUE(w.CheckAllUsed().ok());
}

TEST_F(WeightStoreTest, UnalignedTensorIsRealignedWithSameValues) {
  // Find an unpadded header whose data buffer starts off a 4-byte boundary.
  std::vector<TestTensor> tensors = {{"x", "F32", {3}, F32Bytes({1.25f, -7.0f, 9.5f})}};
  auto [header, data] = Pack(tensors);
  for (int i = 0; (8 + header.dump().size()) % 4 == 0; ++i) {
    header["__metadata__"]["pad"] = std::string(i + 1, 'p');
  }
  Write("model.safetensors", SafetensorsFile(header, data, /*pad=*/false));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<int64_t> shape = {3};
  absl::StatusOr<TensorView> x = (*store)->Get("x", shape);
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x->data) % alignof(float), 0u);
  const float* v = static_cast<const float*>(x->data);
  EXPECT_EQ(v[0], 1.25f);
  EXPECT_EQ(v[1], -7.0f);
  EXPECT_EQ(v[2], 9.5f);
}

TEST_F(WeightStoreTest, OpenFileOpensOneFile) {
  const std::string path = Write("weights.safetensors", SafetensorsFile({kA, kB}));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenFile(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Has("a"));
  EXPECT_FALSE((*store)->Has("c"));
}

TEST_F(WeightStoreTest, MissingSafetensorsIsNotFound) {
  const absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(store.status().message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(store.status().message(), HasSubstr(dir_));
}

TEST_F(WeightStoreTest, TruncatedFileFails) {
  std::string file = SafetensorsFile({kA, kB});
  file.resize(file.size() - 3);  // cut into b's data
  const absl::Status s = OpenError(file);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.safetensors: tensor 'b'"));
  EXPECT_THAT(s.message(), HasSubstr("truncated"));
}

TEST_F(WeightStoreTest, HeaderLengthBeyondFileFails) {
  std::string file = SafetensorsFile({kA});
  file[0] = static_cast<char>(0x00);
  file[1] = static_cast<char>(0x10);  // 4096 bytes of header in a ~100-byte file
  const absl::Status s = OpenError(file);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.safetensors: header length 4096 exceeds"));
}

TEST_F(WeightStoreTest, AbsurdHeaderLengthFails) {
  std::string file = SafetensorsFile({kA});
  file[7] = static_cast<char>(0x7f);
  const absl::Status s = OpenError(file);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("implausibly large"));
}

TEST_F(WeightStoreTest, TooShortFileFails) {
  const absl::Status s = OpenError("abc");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.safetensors"));
}

TEST_F(WeightStoreTest, BadHeaderJsonFails) {
  std::string header = R"({"a": {"dtype": "F32",)";
  std::string file(8, '\0');
  file[0] = static_cast<char>(header.size());
  const absl::Status s = OpenError(file + header);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.safetensors: bad safetensors header JSON"));
}

TEST_F(WeightStoreTest, EntryNotAnObjectFails) {
  const absl::Status s = OpenError(SafetensorsFile(json{{"a", json::array({1, 2})}}, ""));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': entry is not an object"));
}

TEST_F(WeightStoreTest, UnsupportedDtypeFails) {
  const absl::Status s = OpenError(SafetensorsFile({{"ids", "I64", {2}, std::string(16, '\0')}}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'ids'"));
  EXPECT_THAT(s.message(), HasSubstr("unsupported dtype 'I64'"));
}

TEST_F(WeightStoreTest, NegativeShapeFails) {
  auto [header, data] = Pack({kA});
  header["a"]["shape"] = {2, -3};
  const absl::Status s = OpenError(SafetensorsFile(header, data));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': 'shape'"));
}

TEST_F(WeightStoreTest, BadOffsetsFail) {
  auto [header, data] = Pack({kA});
  header["a"]["data_offsets"] = {24, 0};
  const absl::Status s = OpenError(SafetensorsFile(header, data));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': 'data_offsets'"));
}

TEST_F(WeightStoreTest, ShapeSizeMismatchFails) {
  auto [header, data] = Pack({kA});
  header["a"]["shape"] = {2, 2};  // 16 bytes, but the offsets span 24
  const absl::Status s = OpenError(SafetensorsFile(header, data));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a'"));
  EXPECT_THAT(s.message(), HasSubstr("needs 16 bytes"));
}

TEST_F(WeightStoreTest, OverlappingTensorsFail) {
  auto [header, data] = Pack({kA, kB});
  header["b"]["data_offsets"] = {16, 24};  // inside a's [0, 24)
  const absl::Status s = OpenError(SafetensorsFile(header, data));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'b'"));
  EXPECT_THAT(s.message(), HasSubstr("overlaps tensor 'a'"));
}

TEST_F(WeightStoreTest, GetMissingTensorIsNotFound) {
  Write("model.safetensors", SafetensorsFile({kA}));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<int64_t> shape = {2, 3};
  const absl::StatusOr<TensorView> t = (*store)->Get("model.norm.weight", shape);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr("tensor 'model.norm.weight' not found in " + dir_));
}

TEST_F(WeightStoreTest, GetMisshapenTensorFails) {
  Write("model.safetensors", SafetensorsFile({kA}));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<int64_t> shape = {3, 2};
  const absl::StatusOr<TensorView> t = (*store)->Get("a", shape);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("tensor 'a' has shape [2, 3], expected [3, 2]"));
}

TEST_F(WeightStoreTest, CheckAllUsedNamesExtraTensor) {
  Write("model.safetensors", SafetensorsFile({kA, kB}));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<int64_t> shape = {2, 3};
  ASSERT_TRUE((*store)->Get("a", shape).ok());
  const absl::Status s = (*store)->CheckAllUsed();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("unexpected tensor 'b' in " + dir_ + "/model.safetensors"));
}

TEST_F(WeightStoreTest, CheckAllUsedCountsManyExtras) {
  std::vector<TestTensor> tensors;
  for (const char* name : {"e1", "e2", "e3", "e4", "e5"}) {
    tensors.push_back({name, "F32", {1}, F32Bytes({0})});
  }
  Write("model.safetensors", SafetensorsFile(tensors));
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Status s = (*store)->CheckAllUsed();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("unexpected tensor 'e1'"));
  EXPECT_THAT(s.message(), HasSubstr("and 4 more ('e2', 'e3', ...)"));
}

// Two shards and an index naming where each tensor lives.
class ShardedTest : public WeightStoreTest {
 protected:
  void WriteShards(const json& weight_map) {
    Write("model-00001-of-00002.safetensors", SafetensorsFile({kA}));
    Write("model-00002-of-00002.safetensors", SafetensorsFile({kB}));
    Write("model.safetensors.index.json",
          json{{"metadata", {{"total_size", 32}}}, {"weight_map", weight_map}}.dump());
  }
};

TEST_F(ShardedTest, OpensEveryShard) {
  WriteShards(
      {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<int64_t> sa = {2, 3};
  const std::vector<int64_t> sb = {4};
  absl::StatusOr<TensorView> a = (*store)->Get("a", sa);
  absl::StatusOr<TensorView> b = (*store)->Get("b", sb);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(static_cast<const float*>(a->data)[5], 6.0f);
  EXPECT_EQ(Bf16ToF32(static_cast<const uint16_t*>(b->data)[3]), 4.0f);
  EXPECT_EQ((*store)->total_bytes(), 24 + 8);
  EXPECT_TRUE((*store)->CheckAllUsed().ok());
}

TEST_F(ShardedTest, MissingShardIsNotFound) {
  WriteShards({{"a", "model-00001-of-00002.safetensors"},
               {"b", "model-00002-of-00002.safetensors"},
               {"c", "model-00003-of-00003.safetensors"}});
  const absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(store.status().message(), HasSubstr("model-00003-of-00003.safetensors"));
}

TEST_F(ShardedTest, TensorInWrongShardFails) {
  WriteShards(
      {{"a", "model-00002-of-00002.safetensors"}, {"b", "model-00001-of-00002.safetensors"}});
  const absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      store.status().message(),
      HasSubstr("tensor 'a' to " + dir_ + "/model-00002-of-00002.safetensors but it is in"));
}

TEST_F(ShardedTest, DuplicateTensorAcrossShardsFails) {
  Write("model-00001-of-00002.safetensors", SafetensorsFile({kA}));
  Write("model-00002-of-00002.safetensors", SafetensorsFile({kA, kB}));
  Write(
      "model.safetensors.index.json",
      json{{"weight_map",
            {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}}
          .dump());
  const absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(store.status().message(), HasSubstr("tensor 'a' appears in both"));
}

TEST_F(ShardedTest, BadIndexFails) {
  Write("model.safetensors.index.json", R"({"weight_map": ["a"]})");
  const absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenDirectory(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(store.status().message(), HasSubstr("model.safetensors.index.json"));
  EXPECT_THAT(store.status().message(), HasSubstr("weight_map"));
}

}  // namespace
}  // namespace spanserve::model
