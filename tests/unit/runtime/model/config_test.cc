#include "runtime/model/config.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// meta-llama/Llama-2-7b-hf/config.json as transformers wrote it.
constexpr char kLlama2Config[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

// Qwen/Qwen2-0.5B/config.json.
constexpr char kQwen2Config[] = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 131072,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// mistralai/Mixtral-8x7B-v0.1/config.json.
constexpr char kMixtralConfig[] = R"({
  "architectures": ["MixtralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mixtral",
  "num_attention_heads": 32,
  "num_experts_per_tok": 2,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "num_local_experts": 8,
  "output_router_logits": false,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1e6,
  "router_aux_loss_coef": 0.02,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

// Qwen/Qwen1.5-MoE-A2.7B/config.json.
constexpr char kQwen2MoeConfig[] = R"({
  "architectures": ["Qwen2MoeForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 5632,
  "max_position_embeddings": 8192,
  "max_window_layers": 21,
  "model_type": "qwen2_moe",
  "num_attention_heads": 16,
  "num_hidden_layers": 24,
  "num_key_value_heads": 16,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.39.0.dev0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936,
  "decoder_sparse_step": 1,
  "moe_intermediate_size": 1408,
  "shared_expert_intermediate_size": 5632,
  "num_experts_per_tok": 4,
  "num_experts": 60,
  "norm_topk_prob": false,
  "output_router_logits": false,
  "router_aux_loss_coef": 0.001
})";

// allenai/OLMoE-1B-7B-0924/config.json.
constexpr char kOlmoeConfig[] = R"({
  "architectures": ["OlmoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "clip_qkv": null,
  "eos_token_id": 50279,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 1024,
  "max_position_embeddings": 4096,
  "model_type": "olmoe",
  "norm_topk_prob": false,
  "num_attention_heads": 16,
  "num_experts": 64,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 16,
  "num_key_value_heads": 16,
  "output_router_logits": false,
  "pad_token_id": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "router_aux_loss_coef": 0.01,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 50304
})";

// A Qwen3 dense config (the keys and sizes of Qwen3-0.6B's config.json).
constexpr char kQwen3Config[] = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// A Qwen3-MoE config (the keys and sizes of Qwen3-30B-A3B's config.json).
constexpr char kQwen3MoeConfig[] = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 40960,
  "max_window_layers": 48,
  "mlp_only_layers": [],
  "model_type": "qwen3_moe",
  "moe_intermediate_size": 768,
  "norm_topk_prob": true,
  "num_attention_heads": 32,
  "num_experts": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 48,
  "num_key_value_heads": 4,
  "output_router_logits": false,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// A small SpanServe config; fault cases patch one key of it.
json SmallConfig() {
  return json{{"model_type", "spanserve"},      {"hidden_size", 64},
              {"intermediate_size", 128},       {"num_hidden_layers", 4},
              {"num_attention_heads", 4},       {"num_key_value_heads", 2},
              {"max_position_embeddings", 256}, {"vocab_size", 256}};
}

TEST(ModelConfig, Llama2ParsesAsPreRmsNorm) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kLlama2Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 11008);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-5f);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->norm_placement, NormPlacement::kPre);
  EXPECT_EQ(c->norm_type, NormType::kRmsNorm);
  EXPECT_FALSE(c->norm_bias);
  EXPECT_TRUE(c->final_norm);
  EXPECT_THAT(c->bos_token_ids, ElementsAre(1));
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));
  EXPECT_FALSE(c->is_moe());
  EXPECT_FALSE(c->LayerIsMoe(0));
  EXPECT_EQ(c->LayerPlacement(31), NormPlacement::kPre);
}

TEST(ModelConfig, Qwen2ParsesWithGqaTiedEmbeddingsAndImplicitBias) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kQwen2Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen2");
  EXPECT_EQ(c->hidden_size, 896);
  EXPECT_EQ(c->num_heads, 14);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151643));
}

TEST(ModelConfig, SlidingWindow) {
  const auto parse = [](const std::string& text) {
    absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : ModelConfig{};
  };
  // Qwen2.5's use_sliding_window false: no window on any layer.
  const ModelConfig qwen = parse(kQwen2Config);
  EXPECT_EQ(qwen.sliding_window, 0);
  EXPECT_EQ(qwen.LayerSlidingWindow(23), 0);

  json j = json::parse(kQwen2Config);
  j["use_sliding_window"] = true;
  j["sliding_window"] = 8;
  j["max_window_layers"] = 2;
  const ModelConfig q2 = parse(j.dump());
  EXPECT_EQ(q2.LayerSlidingWindow(0), 0);
  EXPECT_EQ(q2.LayerSlidingWindow(1), 0);
  EXPECT_EQ(q2.LayerSlidingWindow(2), 8);
  j.erase("sliding_window");  // Qwen2Config's default
  const ModelConfig q3 = parse(j.dump());
  EXPECT_EQ(q3.LayerSlidingWindow(5), 4096);

  // Mistral: every layer; null means none, an absent key MistralConfig's 4096.
  j = json::parse(kLlama2Config);
  j["model_type"] = "mistral";
  j["sliding_window"] = 4096;
  const ModelConfig m = parse(j.dump());
  EXPECT_EQ(m.LayerSlidingWindow(0), 4096);
  EXPECT_EQ(m.LayerSlidingWindow(31), 4096);
  j["sliding_window"] = nullptr;
  const ModelConfig none = parse(j.dump());
  EXPECT_EQ(none.LayerSlidingWindow(0), 0);
  j.erase("sliding_window");
  const ModelConfig absent = parse(j.dump());
  EXPECT_EQ(absent.LayerSlidingWindow(3), 4096);

  // Llama ignores the key.
  j["model_type"] = "llama";
  j["sliding_window"] = 16;
  const ModelConfig llama = parse(j.dump());
  EXPECT_EQ(llama.LayerSlidingWindow(0), 0);

  // Bad values name the key.
  j["model_type"] = "mistral";
  for (const json& bad : {json(0), json(-3), json("8"), json(2.5)}) {
    j["sliding_window"] = bad;
    const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok()) << bad.dump();
    EXPECT_THAT(c.status().message(), HasSubstr("'sliding_window'"));
  }
  j = json::parse(kQwen2Config);
  j["max_window_layers"] = -1;
  EXPECT_THAT(ParseModelConfig(j.dump()).status().message(), HasSubstr("'max_window_layers'"));
  j["max_window_layers"] = 1;
  j["use_sliding_window"] = "yes";
  EXPECT_THAT(ParseModelConfig(j.dump()).status().message(), HasSubstr("'use_sliding_window'"));
}

TEST(ModelConfig, EosListAndLinearRopeScaling) {
  json j = json::parse(kLlama2Config);
  j["eos_token_id"] = {128001, 128008, 128009};
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  j["head_dim"] = 64;
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 4.0);
  EXPECT_EQ(c->head_dim, 64);
}

// Llama 3.1+ (rope_type "llama3") and Qwen2.5 long-context (type "yarn") rope_scaling.
TEST(ModelConfig, Llama3RopeScaling) {
  json j = json::parse(kLlama2Config);
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c->rope_scaling.freq_divisors.empty());
}

TEST(ModelConfig, YarnRopeScaling) {
  json j = json::parse(kQwen2Config);
  j["rope_scaling"] = {
      {"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kYarn);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c->rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.beta_slow, 1.0);
  EXPECT_FALSE(c->rope_scaling.attention_factor.has_value());
  // The optional keys; 0 for a beta means the default, as transformers' `or 32`.
  j["rope_scaling"] = {{"rope_type", "yarn"},
                       {"factor", 2},
                       {"attention_factor", 1.5},
                       {"beta_fast", 16},
                       {"beta_slow", 0}};
  c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_EQ(c->rope_scaling.attention_factor, 1.5);
  EXPECT_DOUBLE_EQ(c->rope_scaling.beta_fast, 16.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.beta_slow, 1.0);
}

// transformers 5 writes rope_parameters (with rope_theta inside) instead of rope_theta and
// rope_scaling.
TEST(ModelConfig, Transformers5RopeParameters) {
  json j = json::parse(kLlama2Config);
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "linear"}, {"factor", 2.0}};
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.0);
  j["rope_parameters"]["rope_type"] = "longrope";
  EXPECT_THAT(ParseModelConfig(j.dump()).status().message(), HasSubstr("rope_parameters.type"));
  j["rope_parameters"]["rope_type"] = "dynamic";
  const absl::StatusOr<ModelConfig> d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->rope_scaling.type, RopeScalingType::kDynamic);
}

// Dynamic NTK (Llama / Qwen2 spell it "type" or "rope_type"): factor is required and
// positive; the model reaches max_position_embeddings × factor positions.
TEST(ModelConfig, DynamicRopeScaling) {
  json j = json::parse(kLlama2Config);
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kDynamic);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_EQ(c->MaxPositions(), 8192);
  // rope_type; original_max_position_embeddings is allowed (transformers ignores it).
  j["rope_scaling"] = {
      {"rope_type", "dynamic"}, {"factor", 2.5}, {"original_max_position_embeddings", 2048}};
  c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kDynamic);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.5);
  EXPECT_EQ(c->MaxPositions(), 10240);
  // A factor below 1 (transformers warns, and scales all the same) keeps the context.
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 0.5}};
  c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->MaxPositions(), 4096);
  // Every other model reaches max_position_embeddings.
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->MaxPositions(), 4096);
}

// microsoft/Phi-3-mini-4k-instruct's config.json keys (transformers' Phi3Config).
json Phi3Mini4k() {
  return json{{"architectures", {"Phi3ForCausalLM"}},
              {"attention_bias", false},
              {"attention_dropout", 0.0},
              {"bos_token_id", 1},
              {"embd_pdrop", 0.0},
              {"eos_token_id", 32000},
              {"hidden_act", "silu"},
              {"hidden_size", 3072},
              {"initializer_range", 0.02},
              {"intermediate_size", 8192},
              {"max_position_embeddings", 4096},
              {"model_type", "phi3"},
              {"num_attention_heads", 32},
              {"num_hidden_layers", 32},
              {"num_key_value_heads", 32},
              {"original_max_position_embeddings", 4096},
              {"pad_token_id", 32000},
              {"resid_pdrop", 0.0},
              {"rms_norm_eps", 1e-05},
              {"rope_scaling", nullptr},
              {"rope_theta", 10000.0},
              {"sliding_window", 2047},
              {"tie_word_embeddings", false},
              {"torch_dtype", "bfloat16"},
              {"use_cache", true},
              {"vocab_size", 32064}};
}

// Phi-3.5-mini-instruct / Phi-3-mini-128k: longrope with 48 factors each (head_dim 96).
json Phi3Mini128k() {
  json j = Phi3Mini4k();
  j["max_position_embeddings"] = 131072;
  j["sliding_window"] = 262144;
  std::vector<double> short_factor, long_factor;
  for (int i = 0; i < 48; ++i) {
    short_factor.push_back(1.0 + 0.01 * i);
    long_factor.push_back(1.0 + 0.5 * i);
  }
  j["rope_scaling"] = {
      {"type", "longrope"}, {"short_factor", short_factor}, {"long_factor", long_factor}};
  return j;
}

TEST(ModelConfig, Phi3ParsesWithFusedProjectionsAndSlidingWindow) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(Phi3Mini4k().dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "phi3");
  EXPECT_TRUE(c->fused_qkv);
  EXPECT_TRUE(c->fused_gate_up);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->o_proj_bias);
  EXPECT_EQ(c->head_dim, 96);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c->activation, Activation::kSilu);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->norm_placement, NormPlacement::kPre);
  // Phi-3's eager mask applies sliding_window to every layer; absent or null: none.
  EXPECT_EQ(c->sliding_window, 2047);
  EXPECT_EQ(c->LayerSlidingWindow(31), 2047);
  json j = Phi3Mini4k();
  j.erase("sliding_window");
  j.erase("rms_norm_eps");
  j.erase("max_position_embeddings");
  absl::StatusOr<ModelConfig> d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->sliding_window, 0);
  EXPECT_FLOAT_EQ(d->norm_eps, 1e-5f);  // Phi3Config's defaults
  EXPECT_EQ(d->max_position_embeddings, 4096);
  // Harmless keys of other configs; partial_rotary_factor 1 and a matching head_dim.
  j["partial_rotary_factor"] = 1.0;
  j["head_dim"] = 96;
  j["attention_bias"] = true;  // Phi3Config has none: transformers ignores the key
  d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->attention_bias);
}

TEST(ModelConfig, Phi3LongRopeParses) {
  json j = Phi3Mini128k();
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  const RopeScalingConfig& rs = c->rope_scaling;
  EXPECT_EQ(rs.type, RopeScalingType::kLongRope);
  ASSERT_EQ(rs.short_factor.size(), 48u);
  ASSERT_EQ(rs.long_factor.size(), 48u);
  EXPECT_EQ(rs.short_factor[3], 1.03f);
  EXPECT_EQ(rs.long_factor[47], 24.5f);
  EXPECT_EQ(rs.original_max_position_embeddings, 4096);
  ASSERT_TRUE(rs.attention_factor.has_value());
  EXPECT_DOUBLE_EQ(*rs.attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)));
  EXPECT_EQ(c->MaxPositions(), 131072);
  EXPECT_EQ(c->sliding_window, 262144);
  // Phi3Config renames the legacy "su" and "yarn" to longrope; rope_type is read too.
  for (const char* type : {"su", "yarn"}) {
    j["rope_scaling"]["type"] = type;
    c = ParseModelConfig(j.dump());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLongRope) << type;
  }
  j["rope_scaling"].erase("type");
  j["rope_scaling"]["rope_type"] = "longrope";
  c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLongRope);
  // max_position_embeddings <= original: attention factor 1.
  j["max_position_embeddings"] = 4096;
  c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_scaling.attention_factor.value_or(0), 1.0);
}

TEST(ModelConfig, Phi3ErrorsNameTheKey) {
  struct Fault {
    const char* name;
    json patch;
    const char* needle;
  };
  const std::vector<Fault> faults = {
      {"LongropeUnknownKey",
       {{"rope_scaling", {{"factor", 32.0}}}},
       "key 'rope_scaling.factor' is not supported with longrope for model_type 'phi3'"},
      {"LongropeAttentionFactor",
       {{"rope_scaling", {{"attention_factor", 1.2}}}},
       "key 'rope_scaling.attention_factor' is not supported"},
      {"ShortFactorLength",
       {{"rope_scaling", {{"short_factor", {1.0, 2.0}}}}},
       "key 'rope_scaling.short_factor' must have head_dim / 2 = 48 values, got 2"},
      {"LongFactorMissing",
       {{"rope_scaling", {{"long_factor", nullptr}}}},
       "missing required key 'rope_scaling.long_factor'"},
      {"LongFactorNotAList",
       {{"rope_scaling", {{"long_factor", 2.0}}}},
       "key 'rope_scaling.long_factor' must be a list of numbers"},
      {"OtherRopeType",
       {{"rope_scaling", {{"type", "linear"}}}},
       "rope_scaling.type 'linear' is not supported for model_type 'phi3'"},
      {"PartialRotary",
       {{"partial_rotary_factor", 0.75}},
       "key 'partial_rotary_factor' (0.75) is not supported"},
      {"HeadDim", {{"head_dim", 128}}, "key 'head_dim' (128) must equal"},
      {"OriginalZero",
       {{"original_max_position_embeddings", 0}},
       "key 'original_max_position_embeddings' must be positive"},
  };
  for (const Fault& f : faults) {
    SCOPED_TRACE(f.name);
    json j = Phi3Mini128k();
    j.merge_patch(f.patch);
    const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(f.needle));
  }
  // A non-positive factor.
  json j = Phi3Mini128k();
  j["rope_scaling"]["short_factor"][5] = 0.0;
  EXPECT_THAT(ParseModelConfig(j.dump()).status().message(),
              HasSubstr("key 'rope_scaling.short_factor' must hold positive numbers"));
  // longrope elsewhere: transformers' other classes do not switch factors.
  j = json::parse(kLlama2Config);
  j["rope_scaling"] = Phi3Mini128k()["rope_scaling"];
  EXPECT_THAT(ParseModelConfig(j.dump()).status().message(),
              HasSubstr("uses long_factor at every length"));
}

TEST(ModelConfig, LlamaAttentionBiasCoversOProj) {
  json j = json::parse(kLlama2Config);
  j["attention_bias"] = true;
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->o_proj_bias);
  const absl::StatusOr<ModelConfig> q = ParseModelConfig(kQwen2Config);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_FALSE(q->o_proj_bias);
}

// google/gemma-2b/config.json: hidden_act "gelu" and no hidden_activation, which
// transformers 4.46.3 runs as gelu_pytorch_tanh (hidden_act is ignored).
constexpr char kGemmaConfig[] = R"({
  "architectures": ["GemmaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 2,
  "eos_token_id": 1,
  "head_dim": 256,
  "hidden_act": "gelu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 16384,
  "max_position_embeddings": 8192,
  "model_type": "gemma",
  "num_attention_heads": 8,
  "num_hidden_layers": 18,
  "num_key_value_heads": 1,
  "pad_token_id": 0,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.38.0.dev0",
  "use_cache": true,
  "vocab_size": 256000
})";

TEST(ModelConfig, GemmaParsesWithGeGluScaledEmbeddingsAndGainOffset) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kGemmaConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "gemma");
  EXPECT_EQ(c->activation, Activation::kGeluTanh);
  EXPECT_TRUE(c->scale_embeddings);
  EXPECT_EQ(c->norm_gain_offset, 1.0f);
  EXPECT_TRUE(c->tie_word_embeddings);  // GemmaConfig's default
  EXPECT_EQ(c->head_dim, 256);          // not hidden_size / num_heads (256 as well here)
  EXPECT_EQ(c->num_kv_heads, 1);
  EXPECT_EQ(c->norm_placement, NormPlacement::kPre);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->o_proj_bias);

  json j = json::parse(kGemmaConfig);
  j["hidden_activation"] = "gelu_pytorch_tanh";
  j["tie_word_embeddings"] = false;
  j["head_dim"] = 128;
  absl::StatusOr<ModelConfig> d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->activation, Activation::kGeluTanh);
  EXPECT_FALSE(d->tie_word_embeddings);
  EXPECT_EQ(d->head_dim, 128);
  j["hidden_activation"] = "silu";
  d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->activation, Activation::kSilu);

  // Other families: SiLU, unscaled, no offset; hidden_act is read.
  const absl::StatusOr<ModelConfig> llama = ParseModelConfig(kLlama2Config);
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->activation, Activation::kSilu);
  EXPECT_FALSE(llama->scale_embeddings);
  EXPECT_EQ(llama->norm_gain_offset, 0.0f);
  json l = json::parse(kLlama2Config);
  l["hidden_act"] = "gelu_pytorch_tanh";
  const absl::StatusOr<ModelConfig> geglu_llama = ParseModelConfig(l.dump());
  ASSERT_TRUE(geglu_llama.ok()) << geglu_llama.status();
  EXPECT_EQ(geglu_llama->activation, Activation::kGeluTanh);
  EXPECT_FALSE(geglu_llama->scale_embeddings);
}

TEST(ModelConfig, ActivationErrorsNameTheKey) {
  json j = json::parse(kGemmaConfig);
  j["hidden_activation"] = "gelu";  // exact erf GELU: not implemented
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("hidden_activation 'gelu'"));
  j["hidden_activation"] = 3;
  EXPECT_THAT(ParseModelConfig(j.dump()).status().message(), HasSubstr("'hidden_activation'"));

  json l = json::parse(kLlama2Config);
  l["hidden_act"] = "relu";
  c = ParseModelConfig(l.dump());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("hidden_act 'relu'"));

  json m = json::parse(kMixtralConfig);
  m["hidden_act"] = "gelu_pytorch_tanh";
  c = ParseModelConfig(m.dump());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("'hidden_act'"));

  json g = json::parse(kGemmaConfig);
  g["norm_placement"] = "post";
  c = ParseModelConfig(g.dump());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("'norm_placement'"));
}

// google/gemma-2-9b's config.json (as published for transformers 4.42).
constexpr char kGemma2Config[] = R"({
  "architectures": ["Gemma2ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": 1,
  "final_logit_softcapping": 30.0,
  "head_dim": 256,
  "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "gemma2",
  "num_attention_heads": 16,
  "num_hidden_layers": 42,
  "num_key_value_heads": 8,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "sliding_window_size": 4096,
  "torch_dtype": "float32",
  "transformers_version": "4.42.0.dev0",
  "use_cache": true,
  "vocab_size": 256000
})";

TEST(ModelConfig, Gemma2ParsesAsSandwichWithSoftCapsAndAlternatingWindows) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kGemma2Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "gemma2");
  EXPECT_EQ(c->norm_placement, NormPlacement::kSandwich);
  EXPECT_TRUE(c->final_norm);
  EXPECT_EQ(c->activation, Activation::kGeluTanh);
  EXPECT_TRUE(c->scale_embeddings);
  EXPECT_EQ(c->norm_gain_offset, 1.0f);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->attn_logit_softcap, 50.0f);
  EXPECT_EQ(c->final_logit_softcap, 30.0f);
  EXPECT_EQ(c->query_pre_attn_scalar, 256.0);
  EXPECT_EQ(c->AttentionScale(), 1.0f / 16);
  EXPECT_EQ(c->sliding_window, 4096);
  for (int l = 0; l < 42; ++l) EXPECT_EQ(c->LayerSlidingWindow(l), l % 2 == 0 ? 4096 : 0) << l;
  EXPECT_EQ(c->KvWindow(), 0);  // the odd layers attend to everything

  // Gemma2Config's defaults for absent keys; null turns a cap (or the window) off.
  json j = json::parse(kGemma2Config);
  for (const char* key : {"attn_logit_softcapping", "final_logit_softcapping",
                          "query_pre_attn_scalar", "sliding_window"}) {
    j.erase(key);
  }
  absl::StatusOr<ModelConfig> d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->attn_logit_softcap, 50.0f);
  EXPECT_EQ(d->final_logit_softcap, 30.0f);
  EXPECT_EQ(d->query_pre_attn_scalar, 224.0);
  EXPECT_EQ(d->AttentionScale(), static_cast<float>(1.0 / std::sqrt(224.0)));
  EXPECT_EQ(d->sliding_window, 4096);
  j["attn_logit_softcapping"] = nullptr;
  j["final_logit_softcapping"] = nullptr;
  j["sliding_window"] = nullptr;
  d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->attn_logit_softcap, 0.0f);
  EXPECT_EQ(d->final_logit_softcap, 0.0f);
  EXPECT_EQ(d->sliding_window, 0);
  EXPECT_EQ(d->LayerSlidingWindow(0), 0);

  // Gemma (1) and the other families: no caps, head_dim's scale.
  const absl::StatusOr<ModelConfig> gemma = ParseModelConfig(kGemmaConfig);
  ASSERT_TRUE(gemma.ok()) << gemma.status();
  EXPECT_EQ(gemma->attn_logit_softcap, 0.0f);
  EXPECT_EQ(gemma->final_logit_softcap, 0.0f);
  EXPECT_EQ(gemma->AttentionScale(), 1.0f / 16);
  json g = json::parse(kGemmaConfig);
  g["attn_logit_softcapping"] = 50.0;  // not a GemmaConfig key: ignored
  g["query_pre_attn_scalar"] = 100;
  g["sliding_window"] = 8;
  const absl::StatusOr<ModelConfig> gemma_extra = ParseModelConfig(g.dump());
  ASSERT_TRUE(gemma_extra.ok()) << gemma_extra.status();
  EXPECT_EQ(gemma_extra->attn_logit_softcap, 0.0f);
  EXPECT_EQ(gemma_extra->AttentionScale(), 1.0f / 16);
  EXPECT_EQ(gemma_extra->sliding_window, 0);
}

TEST(ModelConfig, Gemma2ErrorsNameTheKey) {
  struct Fault {
    const char* name;
    json patch;
    const char* needle;
  };
  const std::vector<Fault> faults = {
      {"NegativeAttnCap",
       {{"attn_logit_softcapping", -50.0}},
       "key 'attn_logit_softcapping' must be a positive number"},
      {"ZeroAttnCap",
       {{"attn_logit_softcapping", 0}},
       "key 'attn_logit_softcapping' must be a positive number"},
      {"StringFinalCap",
       {{"final_logit_softcapping", "30"}},
       "key 'final_logit_softcapping' must be a number"},
      {"NegativeFinalCap",
       {{"final_logit_softcapping", -1.0}},
       "key 'final_logit_softcapping' must be a positive number"},
      {"HugeFinalCap",
       {{"final_logit_softcapping", 1e300}},
       "key 'final_logit_softcapping' must be a positive number"},
      {"ZeroScalar",
       {{"query_pre_attn_scalar", 0}},
       "key 'query_pre_attn_scalar' must be a positive number"},
      {"NegativeScalar",
       {{"query_pre_attn_scalar", -256}},
       "key 'query_pre_attn_scalar' must be a positive number"},
      {"ZeroWindow", {{"sliding_window", 0}}, "key 'sliding_window' must be positive"},
      {"FloatWindow", {{"sliding_window", 4096.5}}, "key 'sliding_window' must be an integer"},
      {"PostNorm", {{"norm_placement", "pre"}}, "(sandwich, rmsnorm, false)"},
      {"LayerNorm", {{"norm_type", "layernorm"}}, "with model_type 'gemma2'"},
  };
  for (const Fault& f : faults) {
    SCOPED_TRACE(f.name);
    json j = json::parse(kGemma2Config);
    j.merge_patch(f.patch);
    const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(f.needle));
  }
}

// google/gemma-3-1b-it's config.json (transformers 4.50).
constexpr char kGemma3TextConfig[] = R"({
  "architectures": ["Gemma3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": null,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": [1, 106],
  "final_logit_softcapping": null,
  "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 1152,
  "initializer_range": 0.02,
  "intermediate_size": 6912,
  "max_position_embeddings": 32768,
  "model_type": "gemma3_text",
  "num_attention_heads": 4,
  "num_hidden_layers": 26,
  "num_key_value_heads": 1,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": 512,
  "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "use_cache": true,
  "vocab_size": 262144
})";

// google/gemma-3-4b-it's config.json, vision_config shortened: the text model holds only
// the keys that differ from Gemma3TextConfig's defaults.
constexpr char kGemma3Config[] = R"({
  "architectures": ["Gemma3ForConditionalGeneration"],
  "boi_token_index": 255999,
  "eoi_token_index": 256000,
  "eos_token_id": [1, 106],
  "image_token_index": 262144,
  "initializer_range": 0.02,
  "mm_tokens_per_image": 256,
  "model_type": "gemma3",
  "text_config": {
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "model_type": "gemma3_text",
    "num_hidden_layers": 34,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "sliding_window": 1024
  },
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"}
})";

TEST(ModelConfig, Gemma3TextParsesAsSandwichWithQkNormsAndTwoRopes) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kGemma3TextConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "gemma3_text");
  EXPECT_EQ(c->norm_placement, NormPlacement::kSandwich);
  EXPECT_EQ(c->activation, Activation::kGeluTanh);
  EXPECT_TRUE(c->scale_embeddings);
  EXPECT_EQ(c->norm_gain_offset, 1.0f);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_TRUE(c->qk_norm_per_head);
  EXPECT_EQ(c->attn_logit_softcap, 0.0f);
  EXPECT_EQ(c->final_logit_softcap, 0.0f);
  EXPECT_EQ(c->AttentionScale(), 1.0f / 16);
  EXPECT_EQ(c->rope_theta, 1000000.0);
  EXPECT_EQ(c->rope_local_base_freq, 10000.0);
  EXPECT_EQ(c->sliding_window, 512);
  ASSERT_EQ(c->sliding_layers.size(), 26u);
  for (int l = 0; l < 26; ++l) {
    const bool global = l % 6 == 5;
    EXPECT_EQ(c->LayerSlidingWindow(l), global ? 0 : 512) << l;
    EXPECT_EQ(c->LayerUsesLocalRope(l), !global) << l;
  }
  EXPECT_EQ(c->KvWindow(), 0);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{1, 106}));
  EXPECT_TRUE(c->weights_prefix.empty());

  // Gemma3TextConfig's defaults for absent keys.
  json j = json::parse(kGemma3TextConfig);
  for (const char* key :
       {"query_pre_attn_scalar", "sliding_window", "sliding_window_pattern", "rope_local_base_freq",
        "rope_theta", "head_dim", "num_key_value_heads", "vocab_size"}) {
    j.erase(key);
  }
  j["final_logit_softcapping"] = 30.0;
  absl::StatusOr<ModelConfig> d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->query_pre_attn_scalar, 256.0);
  EXPECT_EQ(d->sliding_window, 4096);
  EXPECT_EQ(d->rope_local_base_freq, 10000.0);
  EXPECT_EQ(d->rope_theta, 1000000.0);
  EXPECT_EQ(d->head_dim, 256);
  EXPECT_EQ(d->num_kv_heads, 4);
  EXPECT_EQ(d->vocab_size, 262208);
  EXPECT_EQ(d->final_logit_softcap, 30.0f);  // honoured when set
  EXPECT_EQ(d->LayerSlidingWindow(5), 0);
  EXPECT_EQ(d->LayerSlidingWindow(6), 4096);

  // layer_types (later releases) wins over sliding_window_pattern.
  j = json::parse(kGemma3TextConfig);
  j["num_hidden_layers"] = 4;
  j["layer_types"] = {"full_attention", "sliding_attention", "sliding_attention", "full_attention"};
  d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->LayerSlidingWindow(0), 0);
  EXPECT_EQ(d->LayerSlidingWindow(1), 512);
  EXPECT_EQ(d->LayerSlidingWindow(2), 512);
  EXPECT_EQ(d->LayerSlidingWindow(3), 0);
  EXPECT_FALSE(d->LayerUsesLocalRope(3));
  EXPECT_TRUE(d->LayerUsesLocalRope(2));

  // Gemma 2 and the others have one RoPE.
  const absl::StatusOr<ModelConfig> gemma2 = ParseModelConfig(kGemma2Config);
  ASSERT_TRUE(gemma2.ok()) << gemma2.status();
  EXPECT_FALSE(gemma2->LayerUsesLocalRope(0));
  EXPECT_EQ(gemma2->rope_local_base_freq, 0.0);
}

// A Gemma3ForConditionalGeneration config loads its text model: text_config over
// Gemma3TextConfig's defaults (4B: 34 layers, 8 heads of 256, linear factor 8 on the global
// layers), the top level's eos ids, tensors under language_model., the vision tower's and
// projector's ignored.
TEST(ModelConfig, Gemma3LoadsItsTextConfig) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kGemma3Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "gemma3_text");
  EXPECT_EQ(c->hidden_size, 2560);
  EXPECT_EQ(c->num_layers, 34);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 256);
  EXPECT_EQ(c->vocab_size, 262208);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_EQ(c->rope_theta, 1000000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_local_base_freq, 10000.0);
  EXPECT_EQ(c->sliding_window, 1024);
  EXPECT_EQ(c->LayerSlidingWindow(5), 0);
  EXPECT_EQ(c->LayerSlidingWindow(4), 1024);
  EXPECT_EQ(c->query_pre_attn_scalar, 256.0);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_ids, (std::vector<int>{2}));
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{1, 106}));
  EXPECT_EQ(c->weights_prefix, "language_model.");
  EXPECT_EQ(c->ignored_prefixes,
            (std::vector<std::string>{"vision_tower.", "multi_modal_projector.",
                                      "model.vision_tower.", "model.multi_modal_projector."}));
}

TEST(ModelConfig, Gemma3ErrorsNameTheKey) {
  struct Fault {
    const char* name;
    const char* key;  // set to `value` (merge_patch would delete a null)
    json value;
    const char* needle;
  };
  const std::vector<Fault> faults = {
      {"AttnCap", "attn_logit_softcapping", 50.0,
       "key 'attn_logit_softcapping' must be null with model_type 'gemma3_text'"},
      {"NegativeFinalCap", "final_logit_softcapping", -1.0,
       "key 'final_logit_softcapping' must be a positive number"},
      {"NullWindow", "sliding_window", nullptr,
       "key 'sliding_window' must be a positive integer with model_type 'gemma3_text'"},
      {"ZeroWindow", "sliding_window", 0, "key 'sliding_window' must be positive"},
      {"ZeroPattern", "sliding_window_pattern", 0, "key 'sliding_window_pattern' must be positive"},
      {"StringPattern", "sliding_window_pattern", "6",
       "key 'sliding_window_pattern' must be an integer"},
      {"NegativeLocalBase", "rope_local_base_freq", -1.0,
       "key 'rope_local_base_freq' must be a positive number"},
      {"ZeroScalar", "query_pre_attn_scalar", 0,
       "key 'query_pre_attn_scalar' must be a positive number"},
      {"LayerTypesShort", "layer_types", json::array({"full_attention"}),
       "key 'layer_types' has 1 entries, expected num_hidden_layers = 26"},
      {"LayerTypesNotList", "layer_types", "sliding_attention",
       "key 'layer_types' must be a list of strings"},
      {"DynamicRope", "rope_scaling", json{{"rope_type", "dynamic"}, {"factor", 2.0}},
       "rope_scaling type 'dynamic' is not supported with model_type 'gemma3_text'"},
      {"PreNorm", "norm_placement", "pre", "(sandwich, rmsnorm, false)"},
  };
  for (const Fault& f : faults) {
    SCOPED_TRACE(f.name);
    json j = json::parse(kGemma3TextConfig);
    j[f.key] = f.value;
    const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(f.needle));
  }
  json j = json::parse(kGemma3TextConfig);
  std::vector<std::string> types(26, "sliding_attention");
  types[7] = "local";
  j["layer_types"] = types;
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("key 'layer_types' entry 7 is \"local\""));

  // The multimodal config: its text model's keys are named under text_config.
  for (const auto& [patch, needle] :
       {std::pair<json, std::string>{{{"text_config", nullptr}}, "text_config"},
        {{{"text_config", 5}}, "key 'text_config' must be an object"},
        {{{"text_config", {{"model_type", "gemma2"}}}},
         "key 'text_config.model_type' must be \"gemma3_text\""},
        {{{"text_config", {{"sliding_window", -4}}}},
         "key 'text_config.sliding_window' must be positive"},
        {{{"text_config", {{"attn_logit_softcapping", 20.0}}}},
         "key 'text_config.attn_logit_softcapping' must be null"}}) {
    SCOPED_TRACE(needle);
    json g = json::parse(kGemma3Config);
    g.merge_patch(patch);
    c = ParseModelConfig(g.dump());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(needle));
  }
}

TEST(ModelConfig, MixtralParsesAsMoe) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kMixtralConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->is_moe());
  EXPECT_EQ(c->moe.layout, MoeLayout::kMixtral);
  EXPECT_EQ(c->moe.num_experts, 8);
  EXPECT_EQ(c->moe.top_k, 2);
  EXPECT_TRUE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->moe.moe_intermediate_size, 14336);  // Mixtral experts are intermediate_size wide
  EXPECT_EQ(c->moe.shared_expert_intermediate_size, 0);
  EXPECT_EQ(c->moe.scoring, RouterScoring::kSoftmax);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_FALSE(c->attention_bias);
  for (int layer = 0; layer < c->num_layers; ++layer) EXPECT_TRUE(c->LayerIsMoe(layer));
}

TEST(ModelConfig, Qwen2MoeParsesWithSharedExpert) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kQwen2MoeConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.layout, MoeLayout::kQwen2Moe);
  EXPECT_EQ(c->moe.num_experts, 60);
  EXPECT_EQ(c->moe.top_k, 4);
  EXPECT_FALSE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->moe.moe_intermediate_size, 1408);
  EXPECT_EQ(c->moe.shared_expert_intermediate_size, 5632);
  EXPECT_EQ(c->intermediate_size, 5632);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->LayerIsMoe(0));
  EXPECT_TRUE(c->LayerIsMoe(23));
}

TEST(ModelConfig, OlmoeParsesWithQkNorm) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kOlmoeConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.layout, MoeLayout::kOlmoe);
  EXPECT_EQ(c->moe.num_experts, 64);
  EXPECT_EQ(c->moe.top_k, 8);
  EXPECT_EQ(c->moe.moe_intermediate_size, 1024);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_TRUE(c->bos_token_ids.empty());
  EXPECT_THAT(c->eos_token_ids, ElementsAre(50279));
}

TEST(ModelConfig, Qwen3ParsesWithPerHeadQkNorm) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kQwen3Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen3");
  EXPECT_EQ(c->head_dim, 128);  // 16 heads of 128 over hidden 1024
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_FALSE(c->attention_bias);  // unlike qwen2, no implicit q/k/v biases
  EXPECT_FALSE(c->o_proj_bias);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_TRUE(c->qk_norm_per_head);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_FALSE(c->is_moe());
  EXPECT_EQ(c->norm_placement, NormPlacement::kPre);

  // attention_bias true puts biases on q/k/v and o_proj, as Qwen3Attention does.
  json j = json::parse(kQwen3Config);
  j["attention_bias"] = true;
  const absl::StatusOr<ModelConfig> biased = ParseModelConfig(j.dump());
  ASSERT_TRUE(biased.ok()) << biased.status();
  EXPECT_TRUE(biased->attention_bias);
  EXPECT_TRUE(biased->o_proj_bias);
  // OLMoE's norm covers the whole projection.
  EXPECT_FALSE(ParseModelConfig(kOlmoeConfig)->qk_norm_per_head);
}

TEST(ModelConfig, Qwen3MoeParsesWithPerHeadQkNormAndNoSharedExpert) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(kQwen3MoeConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen3_moe");
  EXPECT_EQ(c->head_dim, 128);  // 32 heads of 128 over hidden 2048
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->o_proj_bias);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_TRUE(c->qk_norm_per_head);
  EXPECT_EQ(c->sliding_window, 0);
  ASSERT_TRUE(c->is_moe());
  EXPECT_EQ(c->moe.layout, MoeLayout::kQwen2Moe);  // mlp.gate, mlp.experts.E.*_proj
  EXPECT_EQ(c->moe.num_experts, 128);
  EXPECT_EQ(c->moe.top_k, 8);
  EXPECT_TRUE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->moe.moe_intermediate_size, 768);
  EXPECT_EQ(c->moe.shared_expert_intermediate_size, 0);
  EXPECT_EQ(c->moe.scoring, RouterScoring::kSoftmax);
  for (int layer = 0; layer < c->num_layers; ++layer) EXPECT_TRUE(c->LayerIsMoe(layer));

  // Qwen3MoeConfig's defaults: norm_topk_prob false; it has no shared expert, so a stray
  // shared_expert_intermediate_size is ignored, as transformers ignores it; mlp_only_layers
  // and decoder_sparse_step pick the dense layers as for Qwen2-MoE.
  json j = json::parse(kQwen3MoeConfig);
  j.erase("norm_topk_prob");
  j["shared_expert_intermediate_size"] = 64;
  j["mlp_only_layers"] = {0, 5};
  j["decoder_sparse_step"] = 2;
  const absl::StatusOr<ModelConfig> d = ParseModelConfig(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->moe.norm_topk_prob);
  EXPECT_EQ(d->moe.shared_expert_intermediate_size, 0);
  EXPECT_FALSE(d->LayerIsMoe(0));
  EXPECT_TRUE(d->LayerIsMoe(1));
  EXPECT_FALSE(d->LayerIsMoe(2));
  EXPECT_TRUE(d->LayerIsMoe(3));
  EXPECT_FALSE(d->LayerIsMoe(5));

  // A qwen3_moe config needs experts.
  j = json::parse(kQwen3MoeConfig);
  j.erase("num_experts");
  const absl::StatusOr<ModelConfig> e = ParseModelConfig(j.dump());
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("qwen3_moe"));
}

TEST(ModelConfig, SpanServeKeys) {
  json j = SmallConfig();
  j["norm_placement"] = "span";
  j["norm_type"] = "layernorm";
  j["norm_eps"] = 1e-5;
  j["skip_scale"] = 2.2;
  j["branch_scale"] = 0.5;
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->norm_placement, NormPlacement::kSpan);
  EXPECT_EQ(c->norm_type, NormType::kLayerNorm);
  EXPECT_TRUE(c->norm_bias);    // LayerNorm defaults to a bias
  EXPECT_FALSE(c->final_norm);  // span defaults to no final norm
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->skip_scale, 2.2f);
  EXPECT_FLOAT_EQ(c->branch_scale, 0.5f);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(NormPlacementName(c->norm_placement), "span");

  j["final_norm"] = true;
  j["norm_bias"] = false;
  const absl::StatusOr<ModelConfig> c2 = ParseModelConfig(j.dump());
  ASSERT_TRUE(c2.ok()) << c2.status();
  EXPECT_TRUE(c2->final_norm);
  EXPECT_FALSE(c2->norm_bias);
}

TEST(ModelConfig, MixResolvesPerLayer) {
  json j = SmallConfig();
  j["norm_placement"] = "mix";
  j["mix_post_layers"] = 1;
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->final_norm);
  EXPECT_EQ(c->LayerPlacement(0), NormPlacement::kPost);
  EXPECT_EQ(c->LayerPlacement(1), NormPlacement::kPre);
  EXPECT_EQ(c->LayerPlacement(3), NormPlacement::kPre);
}

TEST(ModelConfig, EveryPlacementNameRoundTrips) {
  for (const char* name : {"pre", "post", "span", "b2t", "deepnorm", "sandwich", "mix"}) {
    json j = SmallConfig();
    j["norm_placement"] = name;
    const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(NormPlacementName(c->norm_placement), name);
  }
}

TEST(ModelConfig, SpanServeMoeUsesQwen2MoeLayoutAndSparseLayers) {
  json j = SmallConfig();
  j["num_hidden_layers"] = 8;
  j["num_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 32;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = json::array({5});
  j["first_k_dense_replace"] = 2;
  j["scoring_func"] = "sigmoid";
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.layout, MoeLayout::kQwen2Moe);
  EXPECT_EQ(c->moe.scoring, RouterScoring::kSigmoid);
  // MoE iff (i + 1) % 2 == 0, i not in {5}, i >= 2: layers 3 and 7.
  std::vector<int> moe_layers;
  for (int i = 0; i < 8; ++i) {
    if (c->LayerIsMoe(i)) moe_layers.push_back(i);
  }
  EXPECT_THAT(moe_layers, ElementsAre(3, 7));
}

// One fault per case: patch SmallConfig() (null removes the key), expect INVALID_ARGUMENT
// whose message contains `needle`.
struct ConfigFault {
  std::string name;
  json patch;
  std::string needle;
};

class ConfigFaultTest : public ::testing::TestWithParam<ConfigFault> {};

TEST_P(ConfigFaultTest, FailsNamingTheKey) {
  json j = SmallConfig();
  j.merge_patch(GetParam().patch);
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("config.json"));
  EXPECT_THAT(c.status().message(), HasSubstr(GetParam().needle));
}

INSTANTIATE_TEST_SUITE_P(
    Faults, ConfigFaultTest,
    ::testing::Values(
        ConfigFault{"MissingHiddenSize", {{"hidden_size", nullptr}}, "'hidden_size'"},
        ConfigFault{"MissingModelType", {{"model_type", nullptr}}, "'model_type'"},
        ConfigFault{"UnsupportedModelType", {{"model_type", "gpt2"}}, "model_type 'gpt2'"},
        ConfigFault{"WrongTypeHiddenSize", {{"hidden_size", "64"}}, "'hidden_size' must be an"},
        ConfigFault{"WrongTypeTieEmbeddings",
                    {{"tie_word_embeddings", 1}},
                    "'tie_word_embeddings' must be a boolean"},
        ConfigFault{"WrongTypeEos", {{"eos_token_id", "2"}}, "'eos_token_id'"},
        ConfigFault{"NonPositiveLayers",
                    {{"num_hidden_layers", 0}},
                    "'num_hidden_layers' must be positive"},
        ConfigFault{"NegativeVocab", {{"vocab_size", -5}}, "'vocab_size' must be positive"},
        ConfigFault{"HeadsNotDivisible", {{"num_key_value_heads", 3}}, "num_key_value_heads"},
        ConfigFault{"HiddenNotDivisible",
                    {{"hidden_size", 66}, {"num_attention_heads", 4}},
                    "not divisible by num_attention_heads"},
        ConfigFault{"OddHeadDim", {{"head_dim", 15}}, "head_dim"},
        ConfigFault{"UnknownPlacement",
                    {{"norm_placement", "middle"}},
                    "norm_placement 'middle' (allowed: pre, post, span"},
        ConfigFault{"UnknownNormType",
                    {{"norm_type", "batchnorm"}},
                    "norm_type 'batchnorm' (allowed: rmsnorm, layernorm)"},
        ConfigFault{"MixPostLayersTooMany",
                    {{"norm_placement", "mix"}, {"mix_post_layers", 5}},
                    "mix_post_layers"},
        ConfigFault{"MixPostLayersWithoutMix", {{"mix_post_layers", 2}}, "mix_post_layers"},
        ConfigFault{"NonPositiveSkipScale", {{"skip_scale", 0}}, "skip_scale"},
        // Found by tests/fuzz (fuzz_safetensors_config): positive doubles that the float
        // fields store as 0.
        ConfigFault{"EpsUnderflowsFloat", {{"rms_norm_eps", 1e-50}}, "'norm_eps'"},
        ConfigFault{"SkipScaleUnderflowsFloat", {{"skip_scale", 1e-46}}, "'skip_scale'"},
        ConfigFault{"BranchScaleUnderflowsFloat", {{"branch_scale", 1e-300}}, "'branch_scale'"},
        ConfigFault{"RopeScalingDynamicNoFactor",
                    {{"rope_scaling", {{"type", "dynamic"}}}},
                    "missing required key 'rope_scaling.factor'"},
        ConfigFault{"RopeScalingDynamicZeroFactor",
                    {{"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 0}}}},
                    "key 'rope_scaling.factor' must be positive"},
        ConfigFault{"RopeScalingDynamicNegativeFactor",
                    {{"rope_scaling", {{"type", "dynamic"}, {"factor", -2.0}}}},
                    "key 'rope_scaling.factor' must be positive"},
        ConfigFault{"RopeScalingDynamicFactorNotANumber",
                    {{"rope_scaling", {{"type", "dynamic"}, {"factor", "4"}}}},
                    "'rope_scaling.factor'"},
        ConfigFault{"RopeScalingDynamicTooManyPositions",
                    {{"rope_scaling", {{"type", "dynamic"}, {"factor", 1e6}}}},
                    "key 'rope_scaling.factor' (1e+06) times max_position_embeddings (256)"},
        ConfigFault{"RopeScalingDynamicHeadDim2",
                    {{"head_dim", 2}, {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}},
                    "head_dim (2) must be greater than 2 with rope_scaling type dynamic"},
        ConfigFault{"RopeScalingLongrope",
                    {{"rope_scaling", {{"type", "longrope"}, {"factor", 2.0}}}},
                    "rope_scaling.type 'longrope' is supported for model_type 'phi3' only"},
        ConfigFault{"RopeScalingUnknown",
                    {{"rope_scaling", {{"type", "ntk"}, {"factor", 2.0}}}},
                    "rope_scaling.type 'ntk' is not supported (supported: default, linear, "
                    "dynamic, llama3, yarn)"},
        ConfigFault{"RopeScalingLlama3NoLowFreqFactor",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}}}},
                    "missing required key 'rope_scaling.low_freq_factor'"},
        ConfigFault{"RopeScalingLlama3NoHighFreqFactor",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"original_max_position_embeddings", 8192}}}},
                    "missing required key 'rope_scaling.high_freq_factor'"},
        ConfigFault{"RopeScalingLlama3NoOriginal",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}}}},
                    "missing required key 'rope_scaling.original_max_position_embeddings'"},
        ConfigFault{"RopeScalingLlama3NoFactor",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}}}},
                    "missing required key 'rope_scaling.factor'"},
        ConfigFault{"RopeScalingLlama3NegativeLowFreq",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", -1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}}}},
                    "key 'rope_scaling.low_freq_factor' must be positive, got -1"},
        ConfigFault{"RopeScalingLlama3HighNotAboveLow",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 4.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}}}},
                    "key 'rope_scaling.high_freq_factor' must be greater than "
                    "'rope_scaling.low_freq_factor'"},
        ConfigFault{"RopeScalingLlama3OriginalNotInt",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", "8192"}}}},
                    "key 'rope_scaling.original_max_position_embeddings' must be an integer"},
        ConfigFault{"RopeScalingLlama3OriginalZero",
                    {{"rope_scaling",
                      {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 0}}}},
                    "key 'rope_scaling.original_max_position_embeddings' must be positive"},
        ConfigFault{"RopeScalingYarnNoFactor",
                    {{"rope_scaling", {{"type", "yarn"}}}},
                    "missing required key 'rope_scaling.factor'"},
        ConfigFault{"RopeScalingYarnZeroFactor",
                    {{"rope_scaling", {{"type", "yarn"}, {"factor", 0}}}},
                    "key 'rope_scaling.factor' must be positive, got 0"},
        ConfigFault{
            "RopeScalingYarnBadAttentionFactor",
            {{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"attention_factor", -1}}}},
            "key 'rope_scaling.attention_factor' must be positive, got -1"},
        ConfigFault{"RopeScalingYarnBetaFastString",
                    {{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"beta_fast", "32"}}}},
                    "key 'rope_scaling.beta_fast' must be a number"},
        ConfigFault{"RopeScalingYarnNegativeBetaSlow",
                    {{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"beta_slow", -1.0}}}},
                    "key 'rope_scaling.beta_slow' must be positive, got -1"},
        ConfigFault{
            "RopeScalingYarnOriginalNegative",
            {{"rope_scaling",
              {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", -3}}}},
            "key 'rope_scaling.original_max_position_embeddings' must be positive"},
        ConfigFault{"RopeScalingYarnFactorOverflowsFloat",
                    {{"rope_scaling", {{"type", "yarn"}, {"factor", 1e300}}}},
                    "key 'rope_scaling.factor' is out of the float range"},
        ConfigFault{"RopeScalingYarnThetaOne",
                    {{"rope_theta", 1.0}, {"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}}},
                    "key 'rope_theta' must not be 1 with rope_scaling type yarn"},
        ConfigFault{"RopeScalingYarnMscale",
                    {{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"mscale", 0.707}}}},
                    "key 'rope_scaling.mscale' is not supported"},
        ConfigFault{
            "RopeScalingYarnMscaleAllDim",
            {{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"mscale_all_dim", 1.0}}}},
            "key 'rope_scaling.mscale_all_dim' is not supported"},
        ConfigFault{"RopeScalingWrongType", {{"rope_scaling", "linear"}}, "'rope_scaling'"},
        ConfigFault{
            "RopeScalingNoFactor", {{"rope_scaling", {{"type", "linear"}}}}, "rope_scaling.factor"},
        ConfigFault{"TopKAboveExperts",
                    {{"num_experts", 4}, {"num_experts_per_tok", 5}, {"moe_intermediate_size", 32}},
                    "num_experts_per_tok"},
        ConfigFault{"ExpertsWithoutWidth",
                    {{"num_experts", 4}, {"num_experts_per_tok", 2}},
                    "moe_intermediate_size"},
        ConfigFault{"UnknownScoring",
                    {{"num_experts", 4},
                     {"num_experts_per_tok", 2},
                     {"moe_intermediate_size", 32},
                     {"scoring_func", "relu"}},
                    "scoring_func 'relu' (allowed: softmax, sigmoid)"},
        ConfigFault{"MlpOnlyLayerOutOfRange",
                    {{"num_experts", 4},
                     {"num_experts_per_tok", 2},
                     {"moe_intermediate_size", 32},
                     {"mlp_only_layers", json::array({9})}},
                    "mlp_only_layers"},
        ConfigFault{"MixtralWithoutExperts", {{"model_type", "mixtral"}}, "num_experts"}),
    [](const ::testing::TestParamInfo<ConfigFault>& info) { return info.param.name; });

TEST(ModelConfig, BadJsonFails) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig(R"({"hidden_size": 64,)");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("config.json"));
  EXPECT_THAT(c.status().message(), HasSubstr("parse error"));
}

TEST(ModelConfig, TopLevelNotAnObjectFails) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig("[1, 2]");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("object"));
}

std::string MakeTempDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      (std::string("config_test_") + info->name() + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

TEST(LoadModelConfig, ReadsConfigJson) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/config.json") << kQwen2Config;
  const absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 896);
}

TEST(LoadModelConfig, ErrorsNameTheFilePath) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/config.json") << R"({"model_type": "llama"})";
  const absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(dir + "/config.json"));
  EXPECT_THAT(c.status().message(), HasSubstr("'hidden_size'"));
}

TEST(LoadModelConfig, MissingConfigIsNotFound) {
  const std::string dir = MakeTempDir();
  const absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(dir + "/config.json"));
}

}  // namespace
}  // namespace spanserve::model
