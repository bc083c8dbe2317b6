// Models from GGUF files: a GGUF written from the tiny Llama test checkpoint
// (tests/data/models/hf_llama) the way llama.cpp's converter writes one (renamed tensors,
// innermost-first dims, Q/K rows permuted for its rotary layout) gives bit-identical logits
// to the safetensors original; broken or unsupported files fail naming the culprit.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "runtime/gguf/gguf_file.h"
#include "runtime/loader/gguf_tokenizer.h"
#include "runtime/loader/model_source.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/model.h"
#include "runtime/model/weights.h"

namespace spanserve::loader {
namespace {

using gguf::testing::GgufWriter;
using ::testing::HasSubstr;

const std::string kLlamaDir = std::string(SPANSERVE_TEST_DATA) + "/models/hf_llama";

// What to break in the written file.
struct Variant {
  uint32_t version = 3;
  std::string arch = "llama";
  std::string drop_key;           // metadata key left out
  std::string drop_tensor;        // GGUF tensor left out
  int64_t v_rows = 0;             // blk.0.attn_v rows, if not the config's
  uint32_t attn_norm_type = 0;    // blk.0.attn_norm written as this ggml type
  bool extra_tensor = false;      // adds blk.0.attn_qkv.weight
  std::string tokenizer_model;    // tokenizer.ggml.model, if any
  float eps = 1e-5f;              // llama.attention.layer_norm_rms_epsilon
  float freq_base = 10000.0f;     // llama.rope.freq_base
  std::vector<float> rope_freqs;  // written as tensor rope_freqs.weight if not empty
  std::function<void(GgufWriter&)> extra_metadata;
};

std::vector<float> Floats(const model::TensorView& t) {
  std::vector<float> v(t.numel());
  std::memcpy(v.data(), t.data, v.size() * sizeof(float));
  return v;
}

// llama.cpp's permutation: HF row h·D + j·D/2 + i goes to GGUF row h·D + 2i + j.
std::vector<float> Permute(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t heads) {
  std::vector<float> out(w.size());
  const int64_t d = rows / heads;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < d / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(&out[(h * d + 2 * i + j) * cols], &w[(h * d + j * (d / 2) + i) * cols],
                    cols * sizeof(float));
      }
    }
  }
  return out;
}

std::string WriteLlamaGguf(const Variant& v, const std::string& file_name) {
  auto store = model::WeightStore::OpenDirectory(kLlamaDir);
  EXPECT_TRUE(store.ok()) << store.status();
  GgufWriter w(v.version);
  const auto put_u32 = [&](const std::string& key, uint32_t value) {
    if (key != v.drop_key) w.U32(key, value);
  };
  if (v.drop_key != "general.architecture") w.Str("general.architecture", v.arch);
  put_u32(v.arch + ".context_length", 128);
  put_u32(v.arch + ".embedding_length", 36);
  put_u32(v.arch + ".block_count", 3);
  put_u32(v.arch + ".feed_forward_length", 60);
  put_u32(v.arch + ".attention.head_count", 6);
  put_u32(v.arch + ".attention.head_count_kv", 2);
  put_u32(v.arch + ".rope.dimension_count", 6);
  w.F32(v.arch + ".rope.freq_base", v.freq_base);
  if (v.drop_key != "llama.attention.layer_norm_rms_epsilon") {
    w.F32(v.arch + ".attention.layer_norm_rms_epsilon", v.eps);
  }
  put_u32(v.arch + ".vocab_size", 89);
  put_u32("tokenizer.ggml.bos_token_id", 1);
  put_u32("tokenizer.ggml.eos_token_id", 2);
  if (!v.tokenizer_model.empty()) {
    w.Str("tokenizer.ggml.model", v.tokenizer_model);
    std::vector<std::string> tokens;
    for (int i = 0; i < 89; ++i) tokens.push_back(absl::StrCat("t", i));
    w.StrArray("tokenizer.ggml.tokens", tokens);
  }
  const auto tensor =
      [&](const std::string& hf_name) -> std::pair<std::vector<int64_t>, std::vector<float>> {
    for (const int64_t rows : {89, 36, 60, 12, 0}) {
      for (const int64_t cols : {36, 60, 0}) {
        std::vector<int64_t> shape =
            cols == 0 ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, cols};
        if (rows == 0) continue;
        auto t = (*store)->Get(hf_name, shape);
        if (t.ok()) return {shape, Floats(*t)};
      }
    }
    ADD_FAILURE() << "no tensor " << hf_name;
    return {};
  };
  const auto put = [&](const std::string& gguf_name, const std::string& hf_name,
                       int64_t permute_heads) {
    if (gguf_name == v.drop_tensor) return;
    auto [shape, values] = tensor(hf_name);
    if (permute_heads > 0) values = Permute(values, shape[0], shape[1], permute_heads);
    std::vector<uint64_t> ne(shape.rbegin(), shape.rend());
    if (gguf_name == "blk.0.attn_v.weight" && v.v_rows > 0) {
      ne[1] = v.v_rows;
      values.resize(ne[0] * ne[1]);
    }
    if (gguf_name == "blk.0.attn_norm.weight" && v.attn_norm_type != 0) {
      w.AddTensor(
          {gguf_name, ne, v.attn_norm_type, std::vector<uint8_t>(values.size() * 4), std::nullopt});
      return;
    }
    w.AddF32(gguf_name, ne, values);
  };
  put("token_embd.weight", "model.embed_tokens.weight", 0);
  put("output_norm.weight", "model.norm.weight", 0);
  put("output.weight", "lm_head.weight", 0);
  for (int l = 0; l < 3; ++l) {
    const std::string b = absl::StrCat("blk.", l, ".");
    const std::string m = absl::StrCat("model.layers.", l, ".");
    put(b + "attn_norm.weight", m + "input_layernorm.weight", 0);
    put(b + "ffn_norm.weight", m + "post_attention_layernorm.weight", 0);
    put(b + "attn_q.weight", m + "self_attn.q_proj.weight", 6);
    put(b + "attn_k.weight", m + "self_attn.k_proj.weight", 2);
    put(b + "attn_v.weight", m + "self_attn.v_proj.weight", 0);
    put(b + "attn_output.weight", m + "self_attn.o_proj.weight", 0);
    put(b + "ffn_gate.weight", m + "mlp.gate_proj.weight", 0);
    put(b + "ffn_up.weight", m + "mlp.up_proj.weight", 0);
    put(b + "ffn_down.weight", m + "mlp.down_proj.weight", 0);
  }
  if (v.extra_tensor) w.AddF32("blk.0.attn_qkv.weight", {36, 1}, std::vector<float>(36));
  if (!v.rope_freqs.empty()) w.AddF32("rope_freqs.weight", {v.rope_freqs.size()}, v.rope_freqs);
  if (v.extra_metadata) v.extra_metadata(w);
  const std::vector<uint8_t> bytes = w.Build();
  const std::string path = ::testing::TempDir() + file_name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::vector<float> Logits(model::Model& m, const std::vector<int32_t>& tokens) {
  auto cache = model::KvCache::Create(m.backend(), m.config(), 16, 4);
  EXPECT_TRUE(cache.ok());
  model::ForwardWorkspace ws(m.backend());
  const std::vector<int32_t> table = {0, 1, 2, 3};
  const model::SequenceInput seq{
      .tokens = tokens, .cached = 0, .block_table = table, .logits = model::LogitsMode::kAll};
  std::vector<float> logits(tokens.size() * m.config().vocab_size);
  EXPECT_TRUE(m.Forward({&seq, 1}, **cache, ws, logits.data()).ok());
  return logits;
}

absl::Status LoadStatus(const Variant& v, const std::string& name) {
  auto m = model::Model::Load(WriteLlamaGguf(v, name));
  return m.status();
}

TEST(GgufModel, MatchesTheSafetensorsCheckpointBitForBit) {
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 88, 60, 7, 9, 23, 31, 2};
  auto original = model::Model::Load(kLlamaDir);
  ASSERT_TRUE(original.ok()) << original.status();
  const std::vector<float> want = Logits(**original, tokens);
  for (const uint32_t version : {2u, 3u}) {
    Variant v;
    v.version = version;
    auto m = model::Model::Load(WriteLlamaGguf(v, absl::StrCat("llama_v", version, ".gguf")));
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->config().num_kv_heads, 2);
    EXPECT_FALSE((*m)->config().tie_word_embeddings);
    EXPECT_EQ(Logits(**m, tokens), want) << "GGUF v" << version;
  }
}

TEST(GgufModel, TiesEmbeddingsWhenOutputIsAbsent) {
  Variant v;
  v.drop_tensor = "output.weight";
  auto m = model::Model::Load(WriteLlamaGguf(v, "tied.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tie_word_embeddings);
}

TEST(GgufModel, UnsupportedArchitectureIsNamed) {
  Variant v;
  v.arch = "qwen3";
  const absl::Status s = LoadStatus(v, "qwen3.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("general.architecture 'qwen3'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("qwen3.gguf"));
}

TEST(GgufModel, MissingRequiredKeyIsNamed) {
  for (const std::string key : {"llama.block_count", "llama.embedding_length",
                                "llama.attention.layer_norm_rms_epsilon", "general.architecture"}) {
    Variant v;
    v.drop_key = key;
    const absl::Status s = LoadStatus(v, "missing_key.gguf");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("'", key, "'")));
  }
}

TEST(GgufModel, NonFiniteScalarsAreNamed) {
  // Found by tests/fuzz (fuzz_gguf): an infinite eps loaded as inf; a NaN or infinite
  // freq_base became JSON null in the config, i.e. silently the default 10000.
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const float eps : {inf, nan}) {
    Variant v;
    v.eps = eps;
    const absl::Status s = LoadStatus(v, "eps.gguf");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("layer_norm_rms_epsilon")) << s;
  }
  for (const float theta : {inf, nan, -1.0f}) {
    Variant v;
    v.freq_base = theta;
    const absl::Status s = LoadStatus(v, "theta.gguf");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("rope.freq_base")) << s;
  }
}

TEST(GgufModel, ShapeNotMatchingTheConfigNamesBothTensorNames) {
  Variant v;
  v.v_rows = 6;  // the config implies 2 kv heads × 6 = 12
  const absl::Status s = LoadStatus(v, "bad_shape.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.0.self_attn.v_proj.weight"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("'blk.0.attn_v.weight'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("expected [12, 36]"));
}

TEST(GgufModel, MissingTensorIsNamed) {
  Variant v;
  v.drop_tensor = "blk.2.ffn_down.weight";
  const absl::Status s = LoadStatus(v, "missing_tensor.gguf");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.2.mlp.down_proj.weight"));
}

TEST(GgufModel, UnsupportedTensorTypeIsNamed) {
  Variant v;
  v.attn_norm_type = 26;  // I32
  const absl::Status s = LoadStatus(v, "i32.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'blk.0.attn_norm.weight' has type I32"));
}

// Tensors the kernels cannot use in place are widened to f32 at load; when that would not
// fit in the memory the process can take, loading stops first and says how much it needs.
TEST(GgufModel, WideningBeyondTheMemoryLimitIsRefusedBeforeAllocating) {
  const std::string path = WriteLlamaGguf(Variant{}, "widen.gguf");
  auto file = gguf::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::shared_ptr<const gguf::GgufFile> shared = *std::move(file);
  auto config = model::GgufModelConfig(*shared);
  ASSERT_TRUE(config.ok()) << config.status();
  // The permuted attn_q / attn_k rows are the widened tensors here: 3 layers of 36x36 and
  // 12x36 f32.
  const int64_t widened = 3 * (36 * 36 + 12 * 36) * 4;
  auto refused = model::GgufWeights(shared, *config, widened - 1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("widen.gguf"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("F32 tensors are widened"));
  EXPECT_TRUE(model::GgufWeights(shared, *config, widened).ok());
  EXPECT_TRUE(model::GgufWeights(shared, *config).ok());  // the machine's own limit
}

TEST(GgufModel, UnknownTensorIsNamed) {
  Variant v;
  v.extra_tensor = true;
  const absl::Status s = LoadStatus(v, "extra.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("'blk.0.attn_qkv.weight'"));
}

TEST(GgufModel, AnyRegularFileIsReadAsGguf) {
  // A GGUF under another name loads; a file that is not GGUF fails on its magic.
  const std::string path = WriteLlamaGguf(Variant{}, "renamed.gguf");
  const std::string renamed = ::testing::TempDir() + "model.bin";
  std::filesystem::copy_file(path, renamed, std::filesystem::copy_options::overwrite_existing);
  auto m = model::Model::Load(renamed);
  EXPECT_TRUE(m.ok()) << m.status();
  auto bad = LoadModelSource(kLlamaDir + "/config.json", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("config.json: bad magic"));
}

TEST(GgufModel, TruncatedFileFailsThroughLoadModelSource) {
  const std::string path = WriteLlamaGguf(Variant{}, "truncated.gguf");
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  auto source = LoadModelSource(path, {});
  ASSERT_FALSE(source.ok());
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(source.status().message()), HasSubstr("truncated.gguf"));
  EXPECT_THAT(std::string(source.status().message()), HasSubstr("truncated file"));
}

TEST(GgufModel, LoadModelSourceWithoutTokenizerAndWithAnUnsupportedOne) {
  auto source = LoadModelSource(WriteLlamaGguf(Variant{}, "no_tok.gguf"), {});
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(source->format, "gguf");
  EXPECT_EQ(source->tokenizer, nullptr);  // weights only: token-id prompts
  EXPECT_TRUE(source->chat_template.empty());

  Variant v;
  v.tokenizer_model = "bert";
  auto bert = LoadModelSource(WriteLlamaGguf(v, "bert.gguf"), {});
  ASSERT_FALSE(bert.ok());
  EXPECT_EQ(bert.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(bert.status().message()), HasSubstr("tokenizer.ggml.model 'bert'"));
}

// Llama 3.1+ GGUFs: llama.cpp's converter (LlamaModel.generate_extra_tensors) turns
// rope_scaling {"rope_type": "llama3", ...} into tensor rope_freqs.weight, one divisor per
// frequency, computed on the f32 frequencies: 1 above the band, factor below it, and
// 1 / ((1 - smooth) / factor + smooth) inside.
std::vector<float> LlamaCppRopeFreqs(int64_t head_dim, double theta, float factor, float low,
                                     float high, float old_context) {
  std::vector<float> out;
  const float two_pi = static_cast<float>(2 * M_PI);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float freq =
        1.0f /
        static_cast<float>(std::pow(
            theta, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(head_dim))));
    const float wavelen = two_pi / freq;
    if (wavelen < old_context / high) {
      out.push_back(1.0f);
    } else if (wavelen > old_context / low) {
      out.push_back(factor);
    } else {
      const float smooth = (old_context / wavelen - low) / (high - low);
      out.push_back(1.0f / ((1.0f - smooth) / factor + smooth));
    }
  }
  return out;
}

// hf_llama's config.json with Llama 3.1's rope_scaling, original context 200: head_dim 6's
// wavelengths 6.3, 135 and 2.9e3 fall in the kept, interpolated and divided bands.
constexpr double kLlama3Original = 200;

std::string Llama3Dir() {
  const std::string dir = ::testing::TempDir() + "hf_llama_llama3";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kLlamaDir + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  std::ifstream in(kLlamaDir + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["rope_scaling"] = {
      {"rope_type", "llama3"},
      {"factor", 8.0},
      {"low_freq_factor", 1.0},
      {"high_freq_factor", 4.0},
      {"original_max_position_embeddings", static_cast<int>(kLlama3Original)}};
  std::ofstream(dir + "/config.json") << config.dump(2);
  return dir;
}

std::pair<std::vector<float>, std::vector<float>> Tables(model::Model& m) {
  const model::ModelConfig& c = m.config();
  const int64_t n = static_cast<int64_t>(c.max_position_embeddings) * (c.head_dim / 2);
  std::vector<float> cos_t(n), sin_t(n);
  m.backend().RopeTables(c.max_position_embeddings, c.head_dim, c.rope_theta,
                         model::KernelRopeScaling(c), cos_t.data(), sin_t.data());
  return {cos_t, sin_t};
}

TEST(GgufModel, RopeFreqsTensorGivesTheLlama3ConfigTables) {
  auto from_config = model::Model::Load(Llama3Dir());
  ASSERT_TRUE(from_config.ok()) << from_config.status();
  ASSERT_EQ((*from_config)->config().rope_scaling.type, model::RopeScalingType::kLlama3);
  Variant v;
  v.rope_freqs = LlamaCppRopeFreqs(6, 10000.0, 8.0f, 1.0f, 4.0f, kLlama3Original);
  ASSERT_EQ(v.rope_freqs[0], 1.0f);  // kept
  ASSERT_GT(v.rope_freqs[1], 1.0f);  // interpolated
  ASSERT_LT(v.rope_freqs[1], 8.0f);
  ASSERT_EQ(v.rope_freqs[2], 8.0f);  // divided
  auto from_gguf = model::Model::Load(WriteLlamaGguf(v, "llama3_rope_freqs.gguf"));
  ASSERT_TRUE(from_gguf.ok()) << from_gguf.status();
  const model::ModelConfig& g = (*from_gguf)->config();
  EXPECT_EQ(g.rope_scaling.type, model::RopeScalingType::kFreqDivisors);
  EXPECT_EQ(g.rope_scaling.freq_divisors, v.rope_freqs);

  // The tables: equal up to the f32 rounding of the divisor (inv_freq / divisor against
  // transformers' smoothed inv_freq, an ulp or two of the angle); exactly equal outside the
  // interpolated band.
  const auto [want_cos, want_sin] = Tables(**from_config);
  const auto [got_cos, got_sin] = Tables(**from_gguf);
  ASSERT_EQ(got_cos.size(), want_cos.size());
  const int64_t half = 3;
  for (size_t k = 0; k < want_cos.size(); ++k) {
    const int64_t pos = static_cast<int64_t>(k) / half;
    if (k % half != 1) {
      EXPECT_EQ(got_cos[k], want_cos[k]) << "pos " << pos << " i " << k % half;
      EXPECT_EQ(got_sin[k], want_sin[k]) << "pos " << pos << " i " << k % half;
    } else {
      const double tol = 2.4e-7 * (1.0 + static_cast<double>(pos));
      EXPECT_NEAR(got_cos[k], want_cos[k], tol) << "pos " << pos;
      EXPECT_NEAR(got_sin[k], want_sin[k], tol) << "pos " << pos;
    }
  }

  // And so the logits, over 60 positions.
  std::vector<int32_t> tokens;
  for (int i = 0; i < 60; ++i) tokens.push_back((i * 37 + 5) % 89);
  const std::vector<float> want = Logits(**from_config, tokens);
  const std::vector<float> got = Logits(**from_gguf, tokens);
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
  }
  EXPECT_LE(max_diff / max_ref, 1e-5);
  // The unscaled model differs far more: the divisors are applied.
  auto plain = model::Model::Load(kLlamaDir);
  ASSERT_TRUE(plain.ok());
  const std::vector<float> unscaled = Logits(**plain, tokens);
  double plain_diff = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    plain_diff = std::max(plain_diff, std::abs(static_cast<double>(unscaled[i]) - want[i]));
  }
  EXPECT_GT(plain_diff / max_ref, 1e-2);
}

TEST(GgufModel, BadRopeFreqsTensorIsNamed) {
  for (const std::vector<float>& freqs :
       {std::vector<float>{1.0f, 2.0f}, std::vector<float>{1.0f, 0.0f, 8.0f},
        std::vector<float>{1.0f, std::numeric_limits<float>::quiet_NaN(), 8.0f}}) {
    Variant v;
    v.rope_freqs = freqs;
    const absl::Status s = LoadStatus(v, "bad_rope_freqs.gguf");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("'rope_freqs.weight'")) << s;
  }
  Variant linear;
  linear.rope_freqs = {1.0f, 2.0f, 8.0f};
  linear.extra_metadata = [](GgufWriter& w) {
    w.Str("llama.rope.scaling.type", "linear");
    w.F32("llama.rope.scaling.factor", 2.0f);
  };
  const absl::Status s = LoadStatus(linear, "rope_freqs_linear.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("'rope_freqs.weight' together with"));
}

TEST(GgufModel, YarnScalingKeysMapToTheConfig) {
  Variant v;
  v.extra_metadata = [](GgufWriter& w) {
    w.Str("llama.rope.scaling.type", "yarn");
    w.F32("llama.rope.scaling.factor", 4.0f);
    w.U32("llama.rope.scaling.original_context_length", 32);
    w.F32("llama.rope.scaling.yarn_beta_fast", 16.0f);
    w.F32("llama.rope.scaling.yarn_beta_slow", 2.0f);
    w.F32("llama.rope.scaling.attn_factor", 1.0f);
  };
  auto m = model::Model::Load(WriteLlamaGguf(v, "yarn.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  const model::RopeScalingConfig& rs = (*m)->config().rope_scaling;
  EXPECT_EQ(rs.type, model::RopeScalingType::kYarn);
  EXPECT_DOUBLE_EQ(rs.factor, 4.0);
  EXPECT_EQ(rs.original_max_position_embeddings, 32);
  EXPECT_DOUBLE_EQ(rs.beta_fast, 16.0);
  EXPECT_DOUBLE_EQ(rs.beta_slow, 2.0);
  EXPECT_FALSE(rs.attention_factor.has_value());

  Variant log_mul;
  log_mul.extra_metadata = [](GgufWriter& w) {
    w.Str("llama.rope.scaling.type", "yarn");
    w.F32("llama.rope.scaling.factor", 4.0f);
    w.F32("llama.rope.scaling.yarn_log_multiplier", 0.1f);
  };
  absl::Status s = LoadStatus(log_mul, "yarn_log_mul.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("llama.rope.scaling.yarn_log_multiplier"));

  Variant no_factor;
  no_factor.extra_metadata = [](GgufWriter& w) { w.Str("llama.rope.scaling.type", "yarn"); };
  s = LoadStatus(no_factor, "yarn_no_factor.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("llama.rope.scaling.factor"));

  Variant dynamic;
  dynamic.extra_metadata = [](GgufWriter& w) {
    w.Str("llama.rope.scaling.type", "dynamic");
    w.F32("llama.rope.scaling.factor", 4.0f);
  };
  s = LoadStatus(dynamic, "dynamic.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("rope.scaling.type 'dynamic'"));
}

// The tokenizer.ggml.* keys of a SentencePiece ("llama") vocabulary, as llama.cpp writes
// them, give the same ids as the transformers-converted tokenizer.json of that vocabulary.
TEST(GgufTokenizer, LlamaVocabularyMatchesConvertedTokenizer) {
  const std::string dir = std::string(SPANSERVE_TEST_DATA) + "/tokenizers/spm_llama/";
  std::ifstream in(dir + "spm_vocab.json");
  ASSERT_TRUE(in);
  const nlohmann::json v = nlohmann::json::parse(in);
  GgufWriter w;
  w.Str("general.architecture", "llama");
  w.Str("tokenizer.ggml.model", "llama");
  w.StrArray("tokenizer.ggml.tokens", v["tokens"].get<std::vector<std::string>>());
  w.F32Array("tokenizer.ggml.scores", v["scores"].get<std::vector<float>>());
  w.I32Array("tokenizer.ggml.token_type", v["token_types"].get<std::vector<int32_t>>());
  w.U32("tokenizer.ggml.bos_token_id", v["bos_id"].get<uint32_t>());
  w.U32("tokenizer.ggml.eos_token_id", v["eos_id"].get<uint32_t>());
  w.U32("tokenizer.ggml.unknown_token_id", v["unk_id"].get<uint32_t>());
  // No add_bos_token key: llama.cpp's default for SentencePiece vocabularies adds BOS.
  const std::vector<uint8_t> bytes = w.Build();
  auto file = gguf::GgufFile::Parse(bytes, "spm.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  auto spec = GgufVocabulary(**file);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->add_bos);
  auto ours = tokenizer::Tokenizer::FromVocabulary(*spec);
  ASSERT_TRUE(ours.ok()) << ours.status();
  auto want = tokenizer::Tokenizer::FromFile(dir + "tokenizer.json");
  ASSERT_TRUE(want.ok()) << want.status();
  int mismatches = 0;
  for (const char* text : {"Hello world", "  leading spaces", "naïve café 東京", "x=1; y=2\n",
                           "The quick brown fox jumps over the lazy dog."}) {
    if (*(*ours)->Encode(text, true) != *(*want)->Encode(text, true)) {
      ++mismatches;
      ADD_FAILURE() << "ids differ on \"" << text << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0);

  // Inconsistent metadata names the key.
  GgufWriter bad;
  bad.Str("tokenizer.ggml.model", "gpt2");
  bad.StrArray("tokenizer.ggml.tokens", {"a", "b"});
  bad.StrArray("tokenizer.ggml.merges", {"a b"});
  bad.U32("tokenizer.ggml.eos_token_id", 7);
  const std::vector<uint8_t> bad_bytes = bad.Build();
  auto bad_file = gguf::GgufFile::Parse(bad_bytes, "bad.gguf");
  ASSERT_TRUE(bad_file.ok());
  auto bad_spec = GgufVocabulary(**bad_file);
  ASSERT_FALSE(bad_spec.ok());
  EXPECT_THAT(std::string(bad_spec.status().message()),
              HasSubstr("tokenizer.ggml.eos_token_id' = 7 is not a token id"));
}

}  // namespace
}  // namespace spanserve::loader
