#include "test_model.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <utility>

#include "nlohmann/json.hpp"

namespace spanserve::engine::testing {
namespace {

namespace fs = std::filesystem;

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
};

void WriteSafetensors(const fs::path& path, const std::vector<Tensor>& tensors, uint32_t seed) {
  nlohmann::json header = nlohmann::json::object();
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    header[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * n}}};
    offset += 4 * n;
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.2f);
  for (const Tensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const bool is_norm = t.name.find("norm") != std::string::npos;
    for (int64_t i = 0; i < n; ++i) {
      const float v = is_norm ? 1.0f + 0.1f * normal(rng) : normal(rng);
      out.write(reinterpret_cast<const char*>(&v), 4);
    }
  }
}

std::string WriteRandomModel(const fs::path& dir) {
  constexpr int kHidden = 40, kInter = 72, kLayers = 3, kHeads = 4, kKvHeads = 2, kHeadDim = 10,
                kVocab = 97;
  fs::create_directories(dir);
  const nlohmann::json config = {{"model_type", "llama"},
                                 {"hidden_size", kHidden},
                                 {"intermediate_size", kInter},
                                 {"num_hidden_layers", kLayers},
                                 {"num_attention_heads", kHeads},
                                 {"num_key_value_heads", kKvHeads},
                                 {"head_dim", kHeadDim},
                                 {"vocab_size", kVocab},
                                 {"max_position_embeddings", 128},
                                 {"rms_norm_eps", 1e-5},
                                 {"bos_token_id", 1},
                                 {"eos_token_id", 2},
                                 {"tie_word_embeddings", false}};
  std::ofstream(dir / "config.json") << config.dump(2);
  std::vector<Tensor> t = {{"model.embed_tokens.weight", {kVocab, kHidden}},
                           {"lm_head.weight", {kVocab, kHidden}},
                           {"model.norm.weight", {kHidden}}};
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden}});
    t.push_back({p + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden}});
    t.push_back({p + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden}});
    t.push_back({p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}});
    t.push_back({p + "mlp.gate_proj.weight", {kInter, kHidden}});
    t.push_back({p + "mlp.up_proj.weight", {kInter, kHidden}});
    t.push_back({p + "mlp.down_proj.weight", {kHidden, kInter}});
    t.push_back({p + "input_layernorm.weight", {kHidden}});
    t.push_back({p + "post_attention_layernorm.weight", {kHidden}});
  }
  WriteSafetensors(dir / "model.safetensors", t, /*seed=*/1234);
  return dir.string();
}

}  // namespace

std::string TinyModelDir(const std::string& name) {
  // tests/data where the test was built, unless SPANSERVE_SOURCE_DIR names another checkout
  // (tools/gpu_check.sh runs the test on another machine).
  const char* root = std::getenv("SPANSERVE_SOURCE_DIR");
  const fs::path data = root != nullptr && *root != '\0' ? fs::path(root) / "tests" / "data"
                                                         : fs::path(SPANSERVE_TEST_DATA);
  const fs::path golden = data / "models" / name;
  if (fs::exists(golden / "config.json") && fs::exists(golden / "model.safetensors")) {
    return golden.string();
  }
  const fs::path dir = fs::temp_directory_path() / ("spanserve_engine_test_model_" + name);
  if (fs::exists(dir / "model.safetensors")) return dir.string();
  return WriteRandomModel(dir);
}

std::string FakeDecode(std::span<const int32_t> ids, bool skip_special_tokens) {
  std::string s;
  for (int32_t t : ids) {
    if (t <= 2) {
      if (!skip_special_tokens) s += "<" + std::to_string(t) + ">";
      continue;
    }
    s.push_back(static_cast<char>('a' + t % 26));
    s.push_back(static_cast<char>('a' + (t / 26) % 26));
  }
  return s;
}

void Accumulate(RequestOutput&& out, Collected* c) {
  ++c->num_outputs;
  c->tokens.insert(c->tokens.end(), out.token_ids.begin(), out.token_ids.end());
  c->text += out.text;
  for (auto& lp : out.logprobs) c->logprobs.push_back(std::move(lp));
  for (auto& lp : out.prompt_logprobs) c->prompt_logprobs.push_back(std::move(lp));
  if (out.final.has_value()) {
    ++c->num_finals;
    c->final = std::move(*out.final);
  }
}

Collected Drain(RequestStream& stream) {
  Collected c;
  RequestOutput out;
  while (stream.Next(&out)) Accumulate(std::move(out), &c);
  return c;
}

void DrainQueued(RequestStream& stream, Collected* c) {
  while (auto out = stream.TryNext()) Accumulate(std::move(*out), c);
}

}  // namespace spanserve::engine::testing
