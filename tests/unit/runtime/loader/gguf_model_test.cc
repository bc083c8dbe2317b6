// Models from GGUF files: a GGUF written from the tiny Llama test checkpoint
// (tests/data/models/hf_llama) the way llama.cpp's converter writes one (renamed tensors,
// innermost-first dims, Q/K rows permuted for its rotary layout) gives bit-identical logits
// to the safetensors original; so do qwen2 / qwen3 GGUFs of the hf_qwen2 / hf_qwen3 goldens
// (no Q/K permutation) and a llama GGUF with experts of the hf_mixtral golden; broken or
// unsupported files fail naming the culprit.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model_logits.h"
#include "nlohmann/json.hpp"
#include "runtime/gguf/gguf_file.h"
#include "runtime/loader/gguf_tokenizer.h"
#include "runtime/loader/model_source.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/model.h"
#include "runtime/model/weights.h"

namespace spanserve::loader {
namespace {

using test_util::Logits;

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
  bool bf16_matrices = false;  // every 2-D tensor written as BF16 (rounded to nearest even)
  bool bf16_rounded = false;   // every 2-D tensor written as F32 of those BF16 values
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
    if (v.bf16_rounded && ne.size() == 2) {
      for (float& x : values) x = Bf16ToF32(F32ToBf16(x));
    }
    if (v.bf16_matrices && ne.size() == 2) {
      std::vector<uint8_t> data(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = F32ToBf16(values[i]);
        std::memcpy(&data[2 * i], &h, 2);
      }
      w.AddTensor({gguf_name, ne, /*BF16*/ 30, std::move(data), std::nullopt});
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
  v.arch = "gemma3n";
  const absl::Status s = LoadStatus(v, "gemma3n.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("general.architecture 'gemma3n'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("gemma3n.gguf"));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("supported: llama, qwen2, qwen3, qwen2moe, qwen3moe, phi3, gemma, gemma2, "
                        "gemma3"));
}

// The GGUF name llama.cpp's converter gives a checkpoint tensor ("" for none); `gemma2`:
// its sandwich norms (post_attention_layernorm follows the attention there).
std::string GgufName(const std::string& hf, bool gemma2 = false) {
  if (gemma2) {
    static constexpr std::pair<const char*, const char*> kSandwich[] = {
        {"post_attention_layernorm", "post_attention_norm"},
        {"pre_feedforward_layernorm", "ffn_norm"},
        {"post_feedforward_layernorm", "post_ffw_norm"},
    };
    int layer = 0;
    char rest[128] = {};
    if (std::sscanf(hf.c_str(), "model.layers.%d.%127[a-z_].weight", &layer, rest) == 2) {
      for (const auto& [from, to] : kSandwich) {
        if (std::string(rest) == from) return absl::StrCat("blk.", layer, ".", to, ".weight");
      }
    }
  }
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static constexpr std::pair<const char*, const char*> kBlock[] = {
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"self_attn.qkv_proj", "attn_qkv"},
      {"mlp.gate_up_proj", "ffn_up"},
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      {"block_sparse_moe.gate", "ffn_gate_inp"},
      {"mlp.gate", "ffn_gate_inp"},
      {"mlp.shared_expert_gate", "ffn_gate_inp_shexp"},
      {"mlp.shared_expert.gate_proj", "ffn_gate_shexp"},
      {"mlp.shared_expert.up_proj", "ffn_up_shexp"},
      {"mlp.shared_expert.down_proj", "ffn_down_shexp"},
  };
  int layer = 0;
  char rest[128] = {};
  if (std::sscanf(hf.c_str(), "model.layers.%d.%127s", &layer, rest) != 2) return "";
  std::string r = rest;
  const size_t dot = r.rfind('.');
  const std::string suffix = r.substr(dot);
  r.resize(dot);
  for (const auto& [from, to] : kBlock) {
    if (r == from) return absl::StrCat("blk.", layer, ".", to, suffix);
  }
  return "";
}

// A GGUF of the f32 checkpoint in `dir`, written as llama.cpp's convert_hf_to_gguf.py writes
// one for `arch` (here without a vocabulary): the metadata keys it sets under the
// architecture's prefix, its tensor names, innermost-first dims, the values as stored, and
// for llama only the Q / K rows interleaved for its rotary layout.
// Mixtral's experts (w1 / w2 / w3 of block_sparse_moe.experts.E) go stacked into one 3-D tensor
// per kind, blk.N.ffn_{gate,down,up}_exps [experts, rows, cols], as the converter writes them
// (or, with stacked_experts false, one tensor per expert, blk.N.ffn_gate.E, as older files).
// Qwen2-MoE / Qwen3-MoE experts (mlp.experts.E.{gate,down,up}_proj) likewise; Qwen2-MoE's
// shared expert as blk.N.ffn_{gate,down,up}_shexp and its gate as blk.N.ffn_gate_inp_shexp,
// the [hidden] vector llama.cpp reads (shexp_gate_matrix: the checkpoint's [1, hidden]).
// Gemma and Gemma 2 (GemmaModel / Gemma2Model): every norm weight stored as 1 + w (in f32);
// Gemma 2's attn_logit_softcapping, final_logit_softcapping and attention.sliding_window from
// the config, its sandwich norms under their names (GgufName). `extra` adds metadata.
std::string ConvertCheckpoint(const std::string& dir, const std::string& arch,
                              const std::string& file_name, bool stacked_experts = true,
                              const std::function<void(GgufWriter&)>& extra = nullptr,
                              bool shexp_gate_matrix = false) {
  std::ifstream in(dir + "/config.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  auto config = model::LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  auto store = model::WeightStore::OpenDirectory(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  GgufWriter w;
  w.Str("general.architecture", arch);
  w.U32(arch + ".block_count", j["num_hidden_layers"].get<uint32_t>());
  w.U32(arch + ".context_length", j["max_position_embeddings"].get<uint32_t>());
  w.U32(arch + ".embedding_length", j["hidden_size"].get<uint32_t>());
  w.U32(arch + ".feed_forward_length", j["intermediate_size"].get<uint32_t>());
  w.U32(arch + ".attention.head_count", j["num_attention_heads"].get<uint32_t>());
  w.U32(arch + ".attention.head_count_kv", j["num_key_value_heads"].get<uint32_t>());
  w.F32(arch + ".rope.freq_base", j["rope_theta"].get<float>());
  w.F32(arch + ".attention.layer_norm_rms_epsilon", j["rms_norm_eps"].get<float>());
  if (j.contains("head_dim")) {
    w.U32(arch + ".attention.key_length", j["head_dim"].get<uint32_t>());
    w.U32(arch + ".attention.value_length", j["head_dim"].get<uint32_t>());
  }
  if (j.contains("num_local_experts")) {
    w.U32(arch + ".expert_count", j["num_local_experts"].get<uint32_t>());
    w.U32(arch + ".expert_used_count", j["num_experts_per_tok"].get<uint32_t>());
  }
  if (j.contains("num_experts")) {  // Qwen2MoeModel.set_gguf_parameters
    w.U32(arch + ".expert_count", j["num_experts"].get<uint32_t>());
    w.U32(arch + ".expert_used_count", j["num_experts_per_tok"].get<uint32_t>());
    w.U32(arch + ".expert_feed_forward_length", j["moe_intermediate_size"].get<uint32_t>());
    if (j.contains("shared_expert_intermediate_size")) {
      w.U32(arch + ".expert_shared_feed_forward_length",
            j["shared_expert_intermediate_size"].get<uint32_t>());
    }
  }
  const bool gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  if (arch == "gemma3") {  // Gemma3Model.set_gguf_parameters
    w.U32(arch + ".attention.sliding_window", j["sliding_window"].get<uint32_t>());
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      w.Str(arch + ".rope.scaling.type", "linear");
      w.F32(arch + ".rope.scaling.factor", j["rope_scaling"]["factor"].get<float>());
    }
  }
  if (arch == "gemma2") {  // Gemma2Model.set_gguf_parameters
    w.F32(arch + ".attn_logit_softcapping", j["attn_logit_softcapping"].get<float>());
    w.F32(arch + ".final_logit_softcapping", j["final_logit_softcapping"].get<float>());
    w.U32(arch + ".attention.sliding_window", j["sliding_window"].get<uint32_t>());
  }
  if (extra) extra(w);
  for (const auto& [name, shape] : model::ExpectedTensors(*config)) {
    int layer = 0;
    int expert = 0;
    char kind[16] = {};
    const bool mixtral_expert =
        std::sscanf(name.c_str(), "model.layers.%d.block_sparse_moe.experts.%d.%2s", &layer,
                    &expert, kind) == 3;
    const bool qwen_expert =
        !mixtral_expert && std::sscanf(name.c_str(), "model.layers.%d.mlp.experts.%d.%15[a-z_]",
                                       &layer, &expert, kind) == 3;
    if (mixtral_expert || qwen_expert) {
      const std::string k = kind;
      const std::string gguf_kind = k == "w1" || k == "gate_proj"   ? "ffn_gate"
                                    : k == "w2" || k == "down_proj" ? "ffn_down"
                                                                    : "ffn_up";
      const std::string prefix = absl::StrCat(
          "model.layers.", layer, mixtral_expert ? ".block_sparse_moe" : ".mlp", ".experts.");
      if (!stacked_experts) {
        auto t = (*store)->Get(name, shape);
        EXPECT_TRUE(t.ok()) << t.status();
        w.AddF32(absl::StrCat("blk.", layer, ".", gguf_kind, ".", expert, ".weight"),
                 {static_cast<uint64_t>(shape[1]), static_cast<uint64_t>(shape[0])}, Floats(*t));
        continue;
      }
      if (expert != 0) continue;  // stacked with expert 0
      std::vector<float> stacked;
      for (int e = 0; e < config->moe.num_experts; ++e) {
        auto t = (*store)->Get(absl::StrCat(prefix, e, ".", kind, ".weight"), shape);
        EXPECT_TRUE(t.ok()) << t.status();
        const std::vector<float> v = Floats(*t);
        stacked.insert(stacked.end(), v.begin(), v.end());
      }
      w.AddF32(absl::StrCat("blk.", layer, ".", gguf_kind, "_exps.weight"),
               {static_cast<uint64_t>(shape[1]), static_cast<uint64_t>(shape[0]),
                static_cast<uint64_t>(config->moe.num_experts)},
               stacked);
      continue;
    }
    auto t = (*store)->Get(name, shape);
    EXPECT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype, DType::kF32) << name;
    std::vector<float> values = Floats(*t);
    const bool q = absl::StrContains(name, "q_proj.weight");
    if (arch == "llama" && (q || absl::StrContains(name, "k_proj.weight"))) {
      values = Permute(values, shape[0], shape[1], q ? config->num_heads : config->num_kv_heads);
    }
    if (gemma && absl::EndsWith(name, "norm.weight")) {
      for (float& x : values) x = 1.0f + x;  // data_torch + 1
    }
    const std::string gguf_name = GgufName(name, arch == "gemma2" || arch == "gemma3");
    EXPECT_FALSE(gguf_name.empty()) << name;
    if (absl::EndsWith(name, "shared_expert_gate.weight") && !shexp_gate_matrix) {
      w.AddF32(gguf_name, {static_cast<uint64_t>(shape[1])}, values);
      continue;
    }
    w.AddF32(gguf_name, std::vector<uint64_t>(shape.rbegin(), shape.rend()), values);
  }
  const std::vector<uint8_t> bytes = w.Build();
  const std::string path = ::testing::TempDir() + file_name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  return path;
}

// Qwen2 (q/k/v biases) and Qwen3 (head_dim from the metadata, per-head q / k norms) GGUFs of
// the golden checkpoints give bit-identical logits to the safetensors originals: the tensors
// are used in place and, unlike llama's, their Q / K rows are not reordered.
TEST(GgufModel, Qwen2AndQwen3MatchTheirSafetensorsCheckpointsBitForBit) {
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 88, 60, 7, 9, 23, 31, 2, 96, 0};
  for (const auto& [name, arch] : {std::pair<std::string, std::string>{"hf_qwen2", "qwen2"},
                                   std::pair<std::string, std::string>{"hf_qwen3", "qwen3"},
                                   std::pair<std::string, std::string>{"hf_llama", "llama"}}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string(SPANSERVE_TEST_DATA) + "/models/" + name;
    auto original = model::Model::Load(dir);
    ASSERT_TRUE(original.ok()) << original.status();
    std::vector<int32_t> ids = tokens;
    for (int32_t& id : ids) id %= (*original)->config().vocab_size;
    const std::vector<float> want = Logits(**original, ids);
    auto m = model::Model::Load(ConvertCheckpoint(dir, arch, name + ".gguf"));
    ASSERT_TRUE(m.ok()) << m.status();
    const model::ModelConfig& c = (*m)->config();
    EXPECT_EQ(c.model_type, arch);
    EXPECT_EQ(c.attention_bias, arch == "qwen2");
    EXPECT_EQ(c.qk_norm_per_head, arch == "qwen3");
    EXPECT_EQ(c.head_dim, (*original)->config().head_dim);
    EXPECT_EQ(Logits(**m, ids), want);
  }
}

// The config.json of the checkpoint in `src`.
nlohmann::json ReadConfig(const std::filesystem::path& src) {
  std::ifstream in(src / "config.json");
  return nlohmann::json::parse(in);
}

// A copy of the checkpoint in `src` with `config` as its config.json, in the temporary
// directory `name`; returns its path.
std::string WithConfig(const std::filesystem::path& src, const nlohmann::json& config,
                       const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump();
  std::filesystem::copy_file(src / "model.safetensors", dir / "model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  return dir.string();
}

// Gemma and Gemma 2 as llama.cpp's converter writes them: norm weights with the 1 added,
// Gemma 2's sandwich norms and soft-caps. The file has no query_pre_attn_scalar: llama.cpp
// scales by head_size^-0.5 (but for 46 layers), so the Gemma 2 file is checked against
// hf_gemma2 with query_pre_attn_scalar = head_dim (16; hf_gemma2's own 24 gives other
// logits). Bit-identical logits over 20 tokens, past hf_gemma2's window of 6.
TEST(GgufModel, GemmaAndGemma2MatchTheirSafetensorsCheckpointsBitForBit) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < 20; ++i) tokens.push_back((11 * i + 5) % 97);
  const std::string gemma_dir = std::string(SPANSERVE_TEST_DATA) + "/models/hf_gemma";
  {
    auto original = model::Model::Load(gemma_dir);
    ASSERT_TRUE(original.ok()) << original.status();
    auto m = model::Model::Load(ConvertCheckpoint(gemma_dir, "gemma", "hf_gemma.gguf"));
    ASSERT_TRUE(m.ok()) << m.status();
    const model::ModelConfig& c = (*m)->config();
    EXPECT_EQ(c.model_type, "gemma");
    EXPECT_EQ(c.norm_gain_offset, 0.0f);  // the file's weights are the gains
    EXPECT_TRUE(c.scale_embeddings);
    EXPECT_EQ(c.activation, model::Activation::kGeluTanh);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.norm_placement, model::NormPlacement::kPre);
    EXPECT_EQ(Logits(**m, tokens), Logits(**original, tokens));
  }
  const std::filesystem::path src = std::string(SPANSERVE_TEST_DATA) + "/models/hf_gemma2";
  nlohmann::json cfg = ReadConfig(src);
  ASSERT_EQ(cfg["query_pre_attn_scalar"].get<int>(), 24);
  cfg["query_pre_attn_scalar"] = cfg["head_dim"];
  auto head_dim_scaled = model::Model::Load(WithConfig(src, cfg, "gemma2_hd"));
  ASSERT_TRUE(head_dim_scaled.ok()) << head_dim_scaled.status();
  auto original = model::Model::Load(src.string());
  ASSERT_TRUE(original.ok()) << original.status();
  auto m = model::Model::Load(ConvertCheckpoint(src.string(), "gemma2", "hf_gemma2.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  const model::ModelConfig& c = (*m)->config();
  EXPECT_EQ(c.model_type, "gemma2");
  EXPECT_EQ(c.norm_placement, model::NormPlacement::kSandwich);
  EXPECT_EQ(c.norm_gain_offset, 0.0f);
  EXPECT_EQ(c.attn_logit_softcap, 5.0f);
  EXPECT_EQ(c.final_logit_softcap, 3.0f);
  EXPECT_EQ(c.sliding_window, 6);
  EXPECT_EQ(c.LayerSlidingWindow(0), 6);
  EXPECT_EQ(c.LayerSlidingWindow(1), 0);
  EXPECT_EQ(c.AttentionScale(), 0.25f);
  const std::vector<float> got = Logits(**m, tokens);
  EXPECT_EQ(got, Logits(**head_dim_scaled, tokens));
  EXPECT_NE(got, Logits(**original, tokens));
}

// Gemma 3 as llama.cpp's converter (Gemma3Model) writes it: every norm weight (q / k norms
// included) with the 1 added, the sandwich norms, attention.sliding_window and the linear
// scaling of the global layers. llama.cpp fixes what the file does not say: the layer pattern
// (a global layer every sixth), the local RoPE base (10000) and the query scale (head_size
// for all but 62 layers). So the file is checked bit for bit against hf_gemma3 (pattern 3,
// local base 100, query_pre_attn_scalar 24) with those three set to llama.cpp's values, and
// differs from hf_gemma3 itself; 20 tokens, past the window of 5.
TEST(GgufModel, Gemma3MatchesItsSafetensorsCheckpointBitForBit) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < 20; ++i) tokens.push_back((11 * i + 5) % 97);
  const std::filesystem::path src = std::string(SPANSERVE_TEST_DATA) + "/models/hf_gemma3";
  nlohmann::json cfg = ReadConfig(src);
  ASSERT_EQ(cfg["sliding_window_pattern"].get<int>(), 3);
  ASSERT_EQ(cfg["rope_local_base_freq"].get<double>(), 100.0);
  ASSERT_EQ(cfg["query_pre_attn_scalar"].get<int>(), 24);
  cfg["sliding_window_pattern"] = 6;
  cfg["rope_local_base_freq"] = 10000.0;
  cfg["query_pre_attn_scalar"] = cfg["head_dim"];
  auto as_llama_cpp = model::Model::Load(WithConfig(src, cfg, "gemma3_llama"));
  ASSERT_TRUE(as_llama_cpp.ok()) << as_llama_cpp.status();
  auto original = model::Model::Load(src.string());
  ASSERT_TRUE(original.ok()) << original.status();
  auto m = model::Model::Load(ConvertCheckpoint(src.string(), "gemma3", "hf_gemma3.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  const model::ModelConfig& c = (*m)->config();
  EXPECT_EQ(c.model_type, "gemma3_text");
  EXPECT_EQ(c.norm_placement, model::NormPlacement::kSandwich);
  EXPECT_EQ(c.norm_gain_offset, 0.0f);  // the file's weights are the gains
  EXPECT_TRUE(c.qk_norm_per_head);
  EXPECT_EQ(c.attn_logit_softcap, 0.0f);
  EXPECT_EQ(c.final_logit_softcap, 0.0f);
  EXPECT_EQ(c.sliding_window, 5);
  for (int l = 0; l < 6; ++l) EXPECT_EQ(c.LayerSlidingWindow(l), l == 5 ? 0 : 5) << l;
  EXPECT_EQ(c.rope_local_base_freq, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, model::RopeScalingType::kLinear);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.AttentionScale(), 0.25f);
  const std::vector<float> got = Logits(**m, tokens);
  EXPECT_EQ(got, Logits(**as_llama_cpp, tokens));
  EXPECT_NE(got, Logits(**original, tokens));
}

// Gemma 3 metadata: attention.sliding_window is required (as llama.cpp's loader reads it);
// 62 layers (27B) scale queries by (embedding_length / head_count)^-0.5.
TEST(GgufModel, Gemma3MetadataAsLlamaCppReadsIt) {
  const auto config = [](const std::string& name, uint32_t layers, bool window) {
    GgufWriter w;
    w.Str("general.architecture", "gemma3");
    w.U32("gemma3.block_count", layers);
    w.U32("gemma3.context_length", 131072);
    w.U32("gemma3.embedding_length", 5376);
    w.U32("gemma3.feed_forward_length", 21504);
    w.U32("gemma3.attention.head_count", 32);
    w.U32("gemma3.attention.head_count_kv", 16);
    w.U32("gemma3.attention.key_length", 128);
    w.U32("gemma3.attention.value_length", 128);
    w.U32("gemma3.vocab_size", 262208);
    w.F32("gemma3.rope.freq_base", 1000000.0f);
    w.F32("gemma3.attention.layer_norm_rms_epsilon", 1e-6f);
    if (window) w.U32("gemma3.attention.sliding_window", 1024);
    const std::vector<uint8_t> bytes = w.Build();
    const std::string path = ::testing::TempDir() + name;
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    auto file = gguf::GgufFile::Open(path);
    EXPECT_TRUE(file.ok()) << file.status();
    return model::GgufModelConfig(**file);
  };
  absl::StatusOr<model::ModelConfig> c = config("g3_27b.gguf", 62, true);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->query_pre_attn_scalar, 168.0);
  EXPECT_EQ(c->rope_theta, 1000000.0);
  EXPECT_EQ(c->rope_local_base_freq, 10000.0);
  EXPECT_EQ(c->LayerSlidingWindow(0), 1024);
  EXPECT_EQ(c->LayerSlidingWindow(5), 0);
  EXPECT_EQ(c->LayerSlidingWindow(61), 1024);
  c = config("g3_48.gguf", 48, true);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->query_pre_attn_scalar, 128.0);
  c = config("g3_nowindow.gguf", 48, false);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("gemma3.attention.sliding_window"));
}

// Gemma 2 metadata: llama.cpp's defaults for absent keys (window 4096, caps 50 and 30), its
// query scale (embedding_length / head_count for 46 layers, the head size otherwise), and
// bad values named.
TEST(GgufModel, Gemma2MetadataAsLlamaCppReadsIt) {
  const auto config = [](const std::string& name, uint32_t layers,
                         const std::function<void(GgufWriter&)>& extra) {
    GgufWriter w;
    w.Str("general.architecture", "gemma2");
    w.U32("gemma2.block_count", layers);
    w.U32("gemma2.context_length", 8192);
    w.U32("gemma2.embedding_length", 4608);
    w.U32("gemma2.feed_forward_length", 36864);
    w.U32("gemma2.attention.head_count", 32);
    w.U32("gemma2.attention.head_count_kv", 16);
    w.U32("gemma2.attention.key_length", 128);
    w.U32("gemma2.attention.value_length", 128);
    w.U32("gemma2.vocab_size", 256000);
    w.F32("gemma2.attention.layer_norm_rms_epsilon", 1e-6f);
    if (extra) extra(w);
    const std::vector<uint8_t> bytes = w.Build();
    const std::string path = ::testing::TempDir() + name;
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    auto file = gguf::GgufFile::Open(path);
    EXPECT_TRUE(file.ok()) << file.status();
    return model::GgufModelConfig(**file);
  };
  // Gemma 2 27B's shape: 46 layers, query_pre_attn_scalar 4608 / 32 = 144, not 128.
  absl::StatusOr<model::ModelConfig> c = config("g2_27b.gguf", 46, nullptr);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->query_pre_attn_scalar, 144.0);
  EXPECT_EQ(c->AttentionScale(), static_cast<float>(1.0 / 12.0));
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->attn_logit_softcap, 50.0f);
  EXPECT_EQ(c->final_logit_softcap, 30.0f);
  EXPECT_EQ(c->KvWindow(), 0);
  c = config("g2_42.gguf", 42, [](GgufWriter& w) {
    w.U32("gemma2.attention.sliding_window", 1024);
    w.F32("gemma2.attn_logit_softcapping", 20.0f);
  });
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->query_pre_attn_scalar, 128.0);
  EXPECT_EQ(c->sliding_window, 1024);
  EXPECT_EQ(c->attn_logit_softcap, 20.0f);
  for (const auto& [key, needle] :
       {std::pair<std::string, std::string>{"gemma2.attn_logit_softcapping", "= -5"},
        std::pair<std::string, std::string>{"gemma2.final_logit_softcapping", "= 0"}}) {
    c = config("g2_bad.gguf", 42, [&key](GgufWriter& w) {
      w.F32(key, key == "gemma2.attn_logit_softcapping" ? -5.0f : 0.0f);
    });
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(key + " " + needle));
  }
  c = config("g2_window.gguf", 42,
             [](GgufWriter& w) { w.U32("gemma2.attention.sliding_window", 0); });
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("gemma2.attention.sliding_window"));
}

// Phi-3 as llama.cpp's converter (Phi3MiniModel) writes it: the fused attn_qkv and ffn_up
// (gate rows, then up) as stored, not permuted; longrope's factors as the tensors
// rope_factors_short / rope_factors_long with rope.scaling.original_context_length and
// rope.scaling.attn_factor; sliding_window 0 for none. hf_phi3 (window 12) and
// hf_phi3_longrope give bit-identical logits to the safetensors checkpoints, over a text
// within and past the original context of 32.
TEST(GgufModel, Phi3MatchesItsSafetensorsCheckpointsBitForBit) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < 45; ++i) tokens.push_back((7 * i + 3) % 97);
  for (const std::string name : {"hf_phi3", "hf_phi3_longrope"}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string(SPANSERVE_TEST_DATA) + "/models/" + name;
    auto original = model::Model::Load(dir);
    ASSERT_TRUE(original.ok()) << original.status();
    const model::ModelConfig& oc = (*original)->config();
    const auto phi3_keys = [&](float attn_factor) {
      return [&oc, attn_factor](GgufWriter& w) {
        w.U32("phi3.rope.dimension_count", static_cast<uint32_t>(oc.head_dim));
        w.U32("phi3.attention.sliding_window", static_cast<uint32_t>(oc.sliding_window));
        const model::RopeScalingConfig& rs = oc.rope_scaling;
        if (rs.type != model::RopeScalingType::kLongRope) return;
        w.U32("phi3.rope.scaling.original_context_length",
              static_cast<uint32_t>(rs.original_max_position_embeddings));
        w.F32("phi3.rope.scaling.attn_factor", attn_factor);
        w.AddF32("rope_factors_long.weight", {rs.long_factor.size()}, rs.long_factor);
        w.AddF32("rope_factors_short.weight", {rs.short_factor.size()}, rs.short_factor);
      };
    };
    const float attn = static_cast<float>(oc.rope_scaling.attention_factor.value_or(1.0));
    for (const int32_t length : {20, 45}) {
      SCOPED_TRACE(length);
      const std::vector<int32_t> ids(tokens.begin(), tokens.begin() + length);
      const std::vector<float> want = Logits(**original, ids);
      auto m =
          model::Model::Load(ConvertCheckpoint(dir, "phi3", name + ".gguf", true, phi3_keys(attn)));
      ASSERT_TRUE(m.ok()) << m.status();
      const model::ModelConfig& c = (*m)->config();
      EXPECT_EQ(c.model_type, "phi3");
      EXPECT_TRUE(c.fused_qkv && c.fused_gate_up);
      EXPECT_EQ(c.sliding_window, oc.sliding_window);
      EXPECT_EQ(c.rope_scaling.type, oc.rope_scaling.type);
      EXPECT_EQ(c.rope_scaling.short_factor, oc.rope_scaling.short_factor);
      EXPECT_EQ(c.rope_scaling.long_factor, oc.rope_scaling.long_factor);
      EXPECT_EQ(Logits(**m, ids), want);
    }
    if (oc.rope_scaling.type == model::RopeScalingType::kLongRope) {
      // An attention factor other than transformers' is refused, naming the key.
      auto m = model::Model::Load(
          ConvertCheckpoint(dir, "phi3", name + "_attn.gguf", true, phi3_keys(attn * 1.5f)));
      ASSERT_FALSE(m.ok());
      EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented) << m.status();
      EXPECT_THAT(m.status().message(), HasSubstr("phi3.rope.scaling.attn_factor"));
    }
  }
}

// Mixtral as llama.cpp's converter writes it (general.architecture llama, expert_count 4,
// stacked expert tensors, Q / K interleaved) loads as a mixtral model with bit-identical
// logits to the hf_mixtral checkpoint; so do per-expert tensors (older files).
TEST(GgufModel, LlamaWithExpertsMatchesTheMixtralCheckpointBitForBit) {
  const std::string dir = std::string(SPANSERVE_TEST_DATA) + "/models/hf_mixtral";
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 88, 60, 7, 9, 23, 31, 2, 96, 0};
  auto original = model::Model::Load(dir);
  ASSERT_TRUE(original.ok()) << original.status();
  const std::vector<float> want = Logits(**original, tokens);
  for (const bool stacked : {true, false}) {
    SCOPED_TRACE(stacked ? "stacked experts" : "one tensor per expert");
    auto m = model::Model::Load(
        ConvertCheckpoint(dir, "llama", stacked ? "moe.gguf" : "moe_split.gguf", stacked));
    ASSERT_TRUE(m.ok()) << m.status();
    const model::ModelConfig& c = (*m)->config();
    EXPECT_EQ(c.model_type, "mixtral");
    EXPECT_EQ(c.moe.layout, model::MoeLayout::kMixtral);
    EXPECT_EQ(c.moe.num_experts, 4);
    EXPECT_EQ(c.moe.top_k, 2);
    EXPECT_TRUE(c.moe.norm_topk_prob);
    EXPECT_EQ(c.moe.moe_intermediate_size, 20);
    EXPECT_EQ(c.sliding_window, 0);
    EXPECT_EQ(Logits(**m, tokens), want);
  }
}

// qwen2moe and qwen3moe GGUFs of the hf_qwen2_moe / hf_qwen3_moe goldens (stacked experts,
// qwen2moe's shared expert and its gate as a vector or a [1, hidden] matrix, one dense layer
// each: a layer without ffn_gate_inp) give bit-identical logits to the safetensors originals.
// llama.cpp renormalises the top-k weights for qwen3moe and not for qwen2moe; hf_qwen2_moe
// renormalises, so its file says so with qwen2moe.expert_weights_norm.
TEST(GgufModel, Qwen2MoeAndQwen3MoeMatchTheirSafetensorsCheckpointsBitForBit) {
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 88, 60, 7, 9, 23, 31, 2, 96, 0};
  const auto weights_norm = [](GgufWriter& w) { w.Bool("qwen2moe.expert_weights_norm", true); };
  struct Case {
    std::string name, arch;
    bool shexp_gate_matrix;
  };
  for (const Case& k :
       {Case{"hf_qwen2_moe", "qwen2moe", false}, Case{"hf_qwen2_moe", "qwen2moe", true},
        Case{"hf_qwen3_moe", "qwen3moe", false}}) {
    SCOPED_TRACE(absl::StrCat(k.name, k.shexp_gate_matrix ? " gate matrix" : ""));
    const std::string dir = std::string(SPANSERVE_TEST_DATA) + "/models/" + k.name;
    auto original = model::Model::Load(dir);
    ASSERT_TRUE(original.ok()) << original.status();
    const std::vector<float> want = Logits(**original, tokens);
    const bool qwen2 = k.arch == "qwen2moe";
    auto m = model::Model::Load(ConvertCheckpoint(
        dir, k.arch, absl::StrCat(k.arch, k.shexp_gate_matrix, ".gguf"), true,
        qwen2 ? std::function<void(GgufWriter&)>(weights_norm) : nullptr, k.shexp_gate_matrix));
    ASSERT_TRUE(m.ok()) << m.status();
    const model::ModelConfig& c = (*m)->config();
    EXPECT_EQ(c.model_type, qwen2 ? "qwen2_moe" : "qwen3_moe");
    EXPECT_EQ(c.moe.layout, model::MoeLayout::kQwen2Moe);
    EXPECT_EQ(c.moe.num_experts, 4);
    EXPECT_EQ(c.moe.top_k, 2);
    EXPECT_TRUE(c.moe.norm_topk_prob);
    EXPECT_EQ(c.moe.moe_intermediate_size, 16);
    EXPECT_EQ(c.moe.shared_expert_intermediate_size, qwen2 ? 24 : 0);
    EXPECT_EQ(c.moe.mlp_only_layers, (*original)->config().moe.mlp_only_layers);
    EXPECT_EQ(c.attention_bias, qwen2);
    EXPECT_EQ(c.qk_norm_per_head, !qwen2);
    EXPECT_EQ(Logits(**m, tokens), want);
  }
  // Without expert_weights_norm, qwen2moe keeps the top-k softmax weights as llama.cpp does.
  auto m = model::Model::Load(
      ConvertCheckpoint(std::string(SPANSERVE_TEST_DATA) + "/models/hf_qwen2_moe", "qwen2moe",
                        "qwen2moe_no_norm.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE((*m)->config().moe.norm_topk_prob);
  auto original = model::Model::Load(std::string(SPANSERVE_TEST_DATA) + "/models/hf_qwen2_moe");
  ASSERT_TRUE(original.ok()) << original.status();
  EXPECT_NE(Logits(**m, tokens), Logits(**original, tokens));
}

TEST(GgufModel, UnsupportedQwenMoeFilesAreNamed) {
  const std::string models = std::string(SPANSERVE_TEST_DATA) + "/models/";
  // A dense qwen3 checkpoint written as qwen3moe: no expert_count.
  auto m = model::Model::Load(ConvertCheckpoint(models + "hf_qwen3", "qwen3moe", "q3m_dense.gguf"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("qwen3moe.expert_count"));
  // Experts in a dense architecture.
  m = model::Model::Load(ConvertCheckpoint(models + "hf_qwen3_moe", "qwen3", "q3_experts.gguf"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented) << m.status();
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("qwen3.expert_count"));
  // Shared experts in qwen3moe, more than one in qwen2moe, sigmoid routing.
  for (const auto& [name, arch, key, value] :
       {std::tuple<std::string, std::string, std::string, uint32_t>{"hf_qwen3_moe", "qwen3moe",
                                                                    "expert_shared_count", 1},
        std::tuple<std::string, std::string, std::string, uint32_t>{"hf_qwen2_moe", "qwen2moe",
                                                                    "expert_shared_count", 2},
        std::tuple<std::string, std::string, std::string, uint32_t>{"hf_qwen2_moe", "qwen2moe",
                                                                    "expert_gating_func", 2}}) {
    m = model::Model::Load(
        ConvertCheckpoint(models + name, arch, "qmoe_bad.gguf", true,
                          [&](GgufWriter& w) { w.U32(absl::StrCat(arch, ".", key), value); }));
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented) << m.status();
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(absl::StrCat(arch, ".", key)));
  }
}

// A llama MoE GGUF whose experts are Q8_0: the stacked 3-D tensors are split into per-expert
// matrices kept in their blocks, giving exactly the logits of the same blocks stored one
// tensor per expert, and those of the dequantized values within f32 rounding.
std::string WriteQ8MoeGguf(int mode, const std::string& file_name) {  // 0 stacked, 1 split, 2 f32
  constexpr uint64_t kH = 64, kF = 32, kE = 4, kV = 50;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.15f);
  std::uniform_int_distribution<int> q(-127, 127);
  const auto randn = [&](size_t n, float mean = 0.0f) {
    std::vector<float> v(n);
    for (float& x : v) x = mean + normal(rng);
    return v;
  };
  GgufWriter w;
  w.Str("general.architecture", "llama");
  w.U32("llama.context_length", 64);
  w.U32("llama.embedding_length", kH);
  w.U32("llama.block_count", 2);
  w.U32("llama.feed_forward_length", kF);
  w.U32("llama.attention.head_count", 4);
  w.U32("llama.attention.head_count_kv", 2);
  w.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.U32("llama.expert_count", kE);
  w.U32("llama.expert_used_count", 2);
  w.AddF32("token_embd.weight", {kH, kV}, randn(kH * kV));
  w.AddF32("output.weight", {kH, kV}, randn(kH * kV));
  w.AddF32("output_norm.weight", {kH}, randn(kH, 1.0f));
  for (int l = 0; l < 2; ++l) {
    const std::string b = absl::StrCat("blk.", l, ".");
    w.AddF32(b + "attn_norm.weight", {kH}, randn(kH, 1.0f));
    w.AddF32(b + "ffn_norm.weight", {kH}, randn(kH, 1.0f));
    w.AddF32(b + "attn_q.weight", {kH, kH}, randn(kH * kH));
    w.AddF32(b + "attn_k.weight", {kH, kH / 2}, randn(kH * kH / 2));
    w.AddF32(b + "attn_v.weight", {kH, kH / 2}, randn(kH * kH / 2));
    w.AddF32(b + "attn_output.weight", {kH, kH}, randn(kH * kH));
    w.AddF32(b + "ffn_gate_inp.weight", {kH, kE}, randn(kH * kE));
    for (const auto& [kind, cols, rows] :
         {std::tuple<const char*, uint64_t, uint64_t>{"ffn_gate", kH, kF},
          std::tuple<const char*, uint64_t, uint64_t>{"ffn_up", kH, kF},
          std::tuple<const char*, uint64_t, uint64_t>{"ffn_down", kF, kH}}) {
      // Q8_0 blocks: f16 scale, then 32 int8 values.
      const uint64_t blocks = rows * cols / 32;
      std::vector<uint8_t> all;
      std::vector<float> values;
      for (uint64_t e = 0; e < kE; ++e) {
        for (uint64_t k = 0; k < blocks; ++k) {
          const uint16_t d = F32ToF16(0.002f + 0.001f * static_cast<float>(k % 5));
          all.push_back(static_cast<uint8_t>(d & 0xff));
          all.push_back(static_cast<uint8_t>(d >> 8));
          for (int i = 0; i < 32; ++i) {
            const int8_t v = static_cast<int8_t>(q(rng));
            all.push_back(static_cast<uint8_t>(v));
            values.push_back(F16ToF32(d) * static_cast<float>(v));
          }
        }
      }
      if (mode == 0) {
        w.AddTensor({absl::StrCat(b, kind, "_exps.weight"), {cols, rows, kE}, 8, all, {}});
        continue;
      }
      const uint64_t per = blocks * 34;
      for (uint64_t e = 0; e < kE; ++e) {
        const std::string name = absl::StrCat(b, kind, ".", e, ".weight");
        if (mode == 1) {
          w.AddTensor({name,
                       {cols, rows},
                       8,
                       std::vector<uint8_t>(all.begin() + e * per, all.begin() + (e + 1) * per),
                       {}});
        } else {
          w.AddF32(name, {cols, rows},
                   std::vector<float>(values.begin() + e * rows * cols,
                                      values.begin() + (e + 1) * rows * cols));
        }
      }
    }
  }
  const std::vector<uint8_t> bytes = w.Build();
  const std::string path = ::testing::TempDir() + file_name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  return path;
}

TEST(GgufModel, StackedQuantizedExpertsAreSplitInTheirBlocks) {
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 8, 30, 7, 9, 23, 31, 2};
  std::vector<std::vector<float>> logits;
  for (int mode = 0; mode < 3; ++mode) {
    auto m = model::Model::Load(WriteQ8MoeGguf(mode, absl::StrCat("q8moe", mode, ".gguf")));
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->config().moe.num_experts, 4);
    logits.push_back(Logits(**m, tokens));
  }
  EXPECT_EQ(logits[0], logits[1]);
  float max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < logits[0].size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(logits[2][i]));
    max_diff = std::max(max_diff, std::fabs(logits[0][i] - logits[2][i]));
  }
  EXPECT_LE(max_diff, 1e-5f * max_abs);
}

TEST(GgufModel, UnsupportedMoeKeysAreNamed) {
  for (const auto& [key, value] : {std::pair<std::string, uint32_t>{"expert_shared_count", 1},
                                   std::pair<std::string, uint32_t>{"expert_gating_func", 2}}) {
    Variant v;
    v.extra_metadata = [&](GgufWriter& w) {
      w.U32("llama.expert_count", 4);
      w.U32("llama.expert_used_count", 2);
      w.U32("llama." + key, value);
    };
    const absl::Status s = LoadStatus(v, "moe_bad.gguf");
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("llama." + key)) << s;
  }
  Variant v;
  v.extra_metadata = [](GgufWriter& w) { w.U32("llama.expert_count", 4); };
  const absl::Status s = LoadStatus(v, "moe_no_used.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("llama.expert_used_count")) << s;
}

// SPANSERVE_CONVERTED_GGUF_DIR=<dir> also loads <dir>/hf_qwen2.gguf, hf_qwen3.gguf,
// hf_mixtral.gguf, written from those golden checkpoints by llama.cpp's own convert_hf_to_gguf.py
// (--outtype f32), and checks them the same way; likewise hf_qwen2_moe.gguf and
// hf_qwen3_moe.gguf where present (the converter's qwen2moe / qwen3moe tensor lists leave out
// the dense layers these goldens have, and hf_qwen2_moe's file needs
// qwen2moe.expert_weights_norm true, so those two need a patched converter).
TEST(GgufModel, ConvertedByLlamaCppMatchesTheCheckpoint) {
  const char* env = std::getenv("SPANSERVE_CONVERTED_GGUF_DIR");
  if (env == nullptr || *env == 0) GTEST_SKIP() << "SPANSERVE_CONVERTED_GGUF_DIR is not set";
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 88, 60, 7, 9, 23, 31, 2, 96, 0};
  int found = 0;
  for (const std::string name :
       {"hf_qwen2", "hf_qwen3", "hf_mixtral", "hf_qwen2_moe", "hf_qwen3_moe"}) {
    const std::string path = std::string(env) + "/" + name + ".gguf";
    if (!std::filesystem::exists(path)) continue;
    ++found;
    SCOPED_TRACE(path);
    auto original = model::Model::Load(std::string(SPANSERVE_TEST_DATA) + "/models/" + name);
    ASSERT_TRUE(original.ok()) << original.status();
    auto m = model::Model::Load(path);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(Logits(**m, tokens), Logits(**original, tokens));
  }
  EXPECT_GT(found, 0) << "no converted file in " << env;
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

// llama.cpp interleaves a llama GGUF's Q / K rows; a BF16 file's are put back in their own
// type (not widened to f32), so the bf16 kernels take them and decode reads half the bytes.
TEST(GgufModel, Bf16QAndKRowsAreReorderedAsBf16) {
  Variant v;
  v.bf16_matrices = true;
  auto file = gguf::GgufFile::Open(WriteLlamaGguf(v, "bf16.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  std::shared_ptr<const gguf::GgufFile> shared = *std::move(file);
  auto config = model::GgufModelConfig(*shared);
  ASSERT_TRUE(config.ok()) << config.status();
  auto store = model::GgufWeights(shared, *config);
  ASSERT_TRUE(store.ok()) << store.status();
  auto hf = model::WeightStore::OpenDirectory(kLlamaDir);
  ASSERT_TRUE(hf.ok()) << hf.status();
  for (const auto& [name, rows] :
       {std::pair<std::string, int64_t>{"q_proj", 36}, {"k_proj", 12}, {"v_proj", 12}}) {
    const std::string full = "model.layers.1.self_attn." + name + ".weight";
    SCOPED_TRACE(full);
    const std::vector<int64_t> shape = {rows, 36};
    auto got = (*store)->Get(full, shape);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dtype, DType::kBF16);
    auto want = (*hf)->Get(full, shape);
    ASSERT_TRUE(want.ok()) << want.status();
    const std::vector<float> ref = Floats(*want);
    const auto* bf16 = static_cast<const uint16_t*>(got->data);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(bf16[i], F32ToBf16(ref[i])) << "element " << i;
    }
  }
  // The exact path gives the logits of the same values held as f32 (whose Q / K rows are
  // reordered in f32 copies), bit for bit.
  const std::vector<int32_t> tokens = {1, 5, 17, 42, 3, 88, 60, 7, 9, 23, 31, 2};
  auto m = model::Model::Load(WriteLlamaGguf(v, "bf16_model.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  Variant f32;
  f32.bf16_rounded = true;
  auto widened = model::Model::Load(WriteLlamaGguf(f32, "bf16_rounded_f32.gguf"));
  ASSERT_TRUE(widened.ok()) << widened.status();
  EXPECT_EQ(Logits(**m, tokens), Logits(**widened, tokens));
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

// A Qwen2 / Qwen3 GGUF's vocabulary as llama.cpp's converter writes it (tokenizer.ggml.model
// gpt2, pre-tokenizer qwen2, the merges, special tokens as control tokens) gives the same ids
// as the tokenizer.json it came from.
TEST(GgufTokenizer, Qwen2VocabularyMatchesTokenizerJson) {
  const std::string dir = std::string(SPANSERVE_TEST_DATA) + "/tokenizers/bpe_qwen2/";
  std::ifstream in(dir + "tokenizer.json");
  ASSERT_TRUE(in);
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  const auto put = [&](const std::string& text, size_t id, int32_t type) {
    if (tokens.size() <= id) {
      tokens.resize(id + 1);
      types.resize(id + 1, 1);
    }
    tokens[id] = text;
    types[id] = type;
  };
  for (const auto& [text, id] : j["model"]["vocab"].items()) put(text, id.get<size_t>(), 1);
  for (const auto& t : j["added_tokens"]) {
    put(t["content"].get<std::string>(), t["id"].get<size_t>(), t["special"].get<bool>() ? 3 : 4);
  }
  std::vector<std::string> merges;
  for (const auto& m : j["model"]["merges"]) {
    merges.push_back(m.is_string()
                         ? m.get<std::string>()
                         : absl::StrCat(m[0].get<std::string>(), " ", m[1].get<std::string>()));
  }
  GgufWriter w;
  w.Str("general.architecture", "qwen2");
  w.Str("tokenizer.ggml.model", "gpt2");
  w.Str("tokenizer.ggml.pre", "qwen2");
  w.StrArray("tokenizer.ggml.tokens", tokens);
  w.I32Array("tokenizer.ggml.token_type", types);
  w.StrArray("tokenizer.ggml.merges", merges);
  w.U32("tokenizer.ggml.eos_token_id", 0);
  w.U32("tokenizer.ggml.bos_token_id", 0);
  w.Bool("tokenizer.ggml.add_bos_token", false);
  const std::vector<uint8_t> bytes = w.Build();
  auto file = gguf::GgufFile::Parse(bytes, "qwen2.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  auto spec = GgufVocabulary(**file);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto ours = tokenizer::Tokenizer::FromVocabulary(*spec);
  ASSERT_TRUE(ours.ok()) << ours.status();
  auto want = tokenizer::Tokenizer::FromFile(dir + "tokenizer.json");
  ASSERT_TRUE(want.ok()) << want.status();
  for (const char* text :
       {"Hello world", "  leading spaces", "naïve café 東京", "x=1; y=22345\n\n", "I'm it's we'LL",
        "The quick brown fox jumps over the lazy dog.", "<|im_start|>user\nhi<|im_end|>"}) {
    EXPECT_EQ(*(*ours)->Encode(text, true), *(*want)->Encode(text, true)) << text;
  }
}

}  // namespace
}  // namespace spanserve::loader
