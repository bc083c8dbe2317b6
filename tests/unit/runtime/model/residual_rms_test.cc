// Residual-stream sampling (ForwardWorkspace::set_record_residual_rms): the logits do not
// change, and each layer's value is the RMS of that block's output, checked against the
// hidden states themselves. Those are read off a copy of the model truncated after the
// layer whose lm_head is the identity (vocab >= hidden, no final norm): its logits are the
// block's output, bit for bit.
#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/model/config.h"
#include "runtime/model/model.h"
#include "runtime/model/weights.h"

namespace spanserve::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string CaseDir(const std::string& name) {
  return (fs::path(SPANSERVE_TEST_DATA) / "models" / name).string();
}

// Runs `batch` (each sequence on its own fresh blocks) and returns every row of logits.
std::vector<float> RunBatch(Model& model, const std::vector<std::vector<int32_t>>& seqs,
                            ForwardWorkspace& ws) {
  auto cache =
      KvCache::Create(model.backend(), model.config(), /*block_size=*/16, /*num_blocks=*/64);
  EXPECT_TRUE(cache.ok());
  std::vector<std::vector<int32_t>> tables;
  std::vector<SequenceInput> batch;
  int32_t next = 0;
  for (const auto& s : seqs) {
    std::vector<int32_t> t;
    for (size_t i = 0; i < (s.size() + 15) / 16; ++i) t.push_back(next++);
    tables.push_back(std::move(t));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    batch.push_back({seqs[i], 0, tables[i], LogitsMode::kAll});
  }
  std::vector<float> logits(Model::LogitRows(batch) * model.config().vocab_size);
  const absl::Status st = model.Forward(batch, **cache, ws, logits.data());
  EXPECT_TRUE(st.ok()) << st;
  return logits;
}

std::vector<int32_t> Ids(int32_t first, int n) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((first + 7 * i) % 90 + 3);
  return ids;
}

class ResidualRmsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ResidualRmsTest, LogitsAreBitIdenticalWithSamplingOnAndOff) {
  auto model = Model::Load(CaseDir(GetParam()), {.num_threads = 1});
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<std::vector<int32_t>> seqs = {Ids(1, 11), Ids(5, 3)};
  ForwardWorkspace off((*model)->backend()), on((*model)->backend());
  on.set_record_residual_rms(true);
  const std::vector<float> a = RunBatch(**model, seqs, off);
  const std::vector<float> b = RunBatch(**model, seqs, on);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  EXPECT_TRUE(off.residual_rms().empty());
  ASSERT_EQ(static_cast<int>(on.residual_rms().size()), (*model)->config().num_layers);
  for (double v : on.residual_rms()) {
    EXPECT_GT(v, 0);
    EXPECT_TRUE(std::isfinite(v));
  }
  // Deterministic, and off again means not recorded (the last sample stays).
  const std::vector<double> first(on.residual_rms().begin(), on.residual_rms().end());
  RunBatch(**model, seqs, on);
  EXPECT_EQ(first, std::vector<double>(on.residual_rms().begin(), on.residual_rms().end()));
}

// A batch's value pools its tokens: rms(A ∪ B)² = (nA·rms(A)² + nB·rms(B)²) / (nA + nB).
TEST_P(ResidualRmsTest, PoolsEveryTokenOfTheStep) {
  auto model = Model::Load(CaseDir(GetParam()), {.num_threads = 1});
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> a = Ids(2, 13), b = Ids(9, 4);
  ForwardWorkspace ws((*model)->backend());
  ws.set_record_residual_rms(true);
  RunBatch(**model, {a}, ws);
  const std::vector<double> ra(ws.residual_rms().begin(), ws.residual_rms().end());
  RunBatch(**model, {b}, ws);
  const std::vector<double> rb(ws.residual_rms().begin(), ws.residual_rms().end());
  RunBatch(**model, {a, b}, ws);
  for (size_t l = 0; l < ra.size(); ++l) {
    const double pooled =
        std::sqrt((a.size() * ra[l] * ra[l] + b.size() * rb[l] * rb[l]) / (a.size() + b.size()));
    EXPECT_NEAR(ws.residual_rms()[l], pooled, 1e-9 * pooled) << "layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ResidualRmsTest,
                         ::testing::Values("span", "moe_qwen2_span", "pre"));

// Writes <dir>: `source` cut after layer `last` with an identity lm_head, all f32.
void WriteTruncated(const std::string& source, int last, const std::string& dir) {
  fs::create_directories(dir);
  std::ifstream in(source + "/config.json");
  json config = json::parse(in);
  config["num_hidden_layers"] = last + 1;
  config["final_norm"] = false;
  config["tie_word_embeddings"] = false;
  std::ofstream(dir + "/config.json") << config.dump(2);

  auto parsed = LoadModelConfig(dir);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto store = WeightStore::OpenDirectory(source);
  ASSERT_TRUE(store.ok()) << store.status();
  const int64_t H = parsed->hidden_size;
  json header = json::object();
  std::string data;
  for (const auto& [name, shape] : ExpectedTensors(*parsed)) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    std::vector<float> values(numel, 0.0f);
    if (name == "lm_head.weight") {
      for (int64_t i = 0; i < H; ++i) values[i * H + i] = 1.0f;  // logits[:H] = hidden state
    } else {
      auto t = (*store)->Get(name, shape);
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_EQ(t->dtype, DType::kF32) << name;
      std::memcpy(values.data(), t->data, numel * sizeof(float));
    }
    header[name] = {{"dtype", "F32"},
                    {"shape", shape},
                    {"data_offsets", {data.size(), data.size() + numel * sizeof(float)}}};
    data.append(reinterpret_cast<const char*>(values.data()), numel * sizeof(float));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << file << text << data;
}

TEST_P(ResidualRmsTest, EqualsTheRmsOfEachBlocksOutput) {
  const std::string source = CaseDir(GetParam());
  auto model = Model::Load(source, {.num_threads = 1});
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  ASSERT_GE(c.vocab_size, c.hidden_size);  // room for the identity lm_head
  const std::vector<std::vector<int32_t>> seqs = {Ids(4, 9), Ids(11, 6)};
  ForwardWorkspace ws((*model)->backend());
  ws.set_record_residual_rms(true);
  RunBatch(**model, seqs, ws);
  const std::vector<double> sampled(ws.residual_rms().begin(), ws.residual_rms().end());
  ASSERT_EQ(static_cast<int>(sampled.size()), c.num_layers);

  const std::string root = (fs::path(::testing::TempDir()) /
                            ("residual_rms_" + GetParam() + "_" + std::to_string(::getpid())))
                               .string();
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string dir = root + "/layer" + std::to_string(l);
    WriteTruncated(source, l, dir);
    auto cut = Model::Load(dir, {.num_threads = 1});
    ASSERT_TRUE(cut.ok()) << cut.status();
    ForwardWorkspace cut_ws((*cut)->backend());
    const std::vector<float> hidden = RunBatch(**cut, seqs, cut_ws);  // [tokens, vocab]
    const int64_t V = c.vocab_size, H = c.hidden_size;
    const int64_t tokens = static_cast<int64_t>(hidden.size()) / V;
    double sum = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t h = 0; h < H; ++h) sum += double(hidden[t * V + h]) * hidden[t * V + h];
    }
    const double naive = std::sqrt(sum / (tokens * H));
    EXPECT_NEAR(sampled[l], naive, 1e-9 * naive) << "layer " << l;
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace spanserve::model
