#include "runtime/model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <system_error>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace spanserve::model {
namespace {

// The most positions a dynamic NTK model may reach (max_position_embeddings × factor): its
// RoPE tables hold one row per position.
constexpr int kMaxDynamicPositions = 1 << 24;

using json = nlohmann::json;

constexpr NormPlacement kAllPlacements[] = {
    NormPlacement::kPre,      NormPlacement::kPost,     NormPlacement::kSpan, NormPlacement::kB2t,
    NormPlacement::kDeepNorm, NormPlacement::kSandwich, NormPlacement::kMix,
};

// Reads typed keys of one JSON object; every error is INVALID_ARGUMENT prefixed with the
// source file and naming the key (with its parent, e.g. "rope_scaling.factor").
class KeyReader {
 public:
  KeyReader(const json& obj, std::string source, std::string prefix = "")
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  const std::string& source() const { return source_; }
  std::string Name(std::string_view key) const { return prefix_ + std::string(key); }

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
  }

  // Absent keys and JSON null both mean "use the default": transformers writes null for
  // options that are unset (rope_scaling, sliding_window, ...).
  const json* Find(std::string_view key) const {
    const auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  // Whether the key is there at all (null included).
  bool Has(std::string_view key) const { return obj_.find(key) != obj_.end(); }

  absl::Status TypeError(std::string_view key, const json& v, absl::string_view want) const {
    return Error(absl::StrCat("key '", Name(key), "' must be ", want, ", got ", v.type_name(), " ",
                              v.dump()));
  }

  absl::StatusOr<int64_t> AsInt(std::string_view key, const json& v) const {
    if (!v.is_number_integer()) return TypeError(key, v, "an integer");
    constexpr int64_t kMax = std::numeric_limits<int>::max();
    constexpr int64_t kMin = std::numeric_limits<int>::min();
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(kMax)
                               : (v.get<int64_t>() > kMax || v.get<int64_t>() < kMin)) {
      return Error(absl::StrCat("key '", Name(key), "' is out of range: ", v.dump()));
    }
    return v.get<int64_t>();
  }

  // An int >= min_value; `fallback` when absent, or an error naming the key if none.
  absl::StatusOr<int> Int(std::string_view key, std::optional<int> fallback, int min_value) const {
    const json* v = Find(key);
    if (v == nullptr) {
      if (!fallback.has_value()) return Missing(key);
      return *fallback;
    }
    ASSIGN_OR_RETURN(const int64_t value, AsInt(key, *v));
    if (value < min_value) {
      return Error(
          min_value == 1
              ? absl::StrCat("key '", Name(key), "' must be positive, got ", value)
              : absl::StrCat("key '", Name(key), "' must be >= ", min_value, ", got ", value));
    }
    return static_cast<int>(value);
  }

  absl::StatusOr<int> PositiveInt(std::string_view key,
                                  std::optional<int> fallback = std::nullopt) const {
    return Int(key, fallback, 1);
  }

  // A finite number (JSON integers accepted: configs write 10000 and 10000.0 alike).
  absl::StatusOr<std::optional<double>> OptNumber(std::string_view key) const {
    const json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) return TypeError(key, *v, "a number");
    const double value = v->get<double>();
    if (!std::isfinite(value)) return Error(absl::StrCat("key '", Name(key), "' is not finite"));
    return value;
  }

  absl::StatusOr<double> PositiveNumber(std::string_view key, double fallback) const {
    ASSIGN_OR_RETURN(const std::optional<double> v, OptNumber(key));
    const double value = v.value_or(fallback);
    // Also rejects values that overflow the float the runtime stores them in, or underflow
    // it to 0 (a norm eps of 1e-50 would be stored as 0).
    const float stored = static_cast<float>(value);
    if (!(value > 0) || !std::isfinite(stored) || !(stored > 0)) {
      return Error(absl::StrCat("key '", Name(key), "' must be a positive number, got ", value));
    }
    return value;
  }

  absl::StatusOr<std::optional<bool>> OptBool(std::string_view key) const {
    const json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) return TypeError(key, *v, "a boolean");
    return v->get<bool>();
  }

  absl::StatusOr<bool> Bool(std::string_view key, bool fallback) const {
    ASSIGN_OR_RETURN(const std::optional<bool> v, OptBool(key));
    return v.value_or(fallback);
  }

  absl::StatusOr<std::optional<std::string>> OptString(std::string_view key) const {
    const json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) return TypeError(key, *v, "a string");
    return v->get<std::string>();
  }

  // An int or a list of ints, each >= 0 (token ids); empty when absent.
  absl::StatusOr<std::vector<int>> IntList(std::string_view key, bool allow_scalar) const {
    std::vector<int> out;
    const json* v = Find(key);
    if (v == nullptr) return out;
    const char* const want =
        allow_scalar ? "an integer or a list of integers" : "a list of integers";
    if (v->is_array()) {
      for (const json& item : *v) {
        if (!item.is_number_integer()) return TypeError(key, *v, want);
        ASSIGN_OR_RETURN(const int64_t id, AsInt(key, item));
        out.push_back(static_cast<int>(id));
      }
    } else if (allow_scalar && v->is_number_integer()) {
      ASSIGN_OR_RETURN(const int64_t id, AsInt(key, *v));
      out.push_back(static_cast<int>(id));
    } else {
      return TypeError(key, *v, want);
    }
    for (const int id : out) {
      if (id < 0) return Error(absl::StrCat("key '", Name(key), "' has a negative value ", id));
    }
    return out;
  }

  absl::Status Missing(std::string_view key) const {
    return Error(absl::StrCat("missing required key '", Name(key), "'"));
  }

 private:
  const json& obj_;
  std::string source_;
  std::string prefix_;
};

// Looks `value` up in `options` ({name, enum} pairs); an error lists the allowed names.
template <typename E, size_t N>
absl::StatusOr<E> ParseEnum(const KeyReader& r, std::string_view key, const std::string& value,
                            const std::pair<const char*, E> (&options)[N]) {
  std::vector<std::string> names;
  for (const auto& [name, e] : options) {
    if (name == value) return e;
    names.push_back(name);
  }
  return r.Error(absl::StrCat("unknown ", r.Name(key), " '", value,
                              "' (allowed: ", absl::StrJoin(names, ", "), ")"));
}

// Phi-3's longrope: exactly type (or rope_type), short_factor and long_factor, as transformers
// 4.46.3's Phi3Config validates it, each list head_dim / 2 positive numbers (stored as the
// f32 tensors transformers builds from them). original_max_position_embeddings is the
// top-level key; the attention factor is set once max_position_embeddings is known.
absl::Status ParseLongRope(const KeyReader& r, const KeyReader& rs, const char* key,
                           ModelConfig& c) {
  const json& obj = *r.Find(key);
  for (const auto& [name, value] : obj.items()) {
    if (name != "type" && name != "rope_type" && name != "short_factor" && name != "long_factor" &&
        !(std::string_view(key) == "rope_parameters" && name == "rope_theta")) {
      return r.Error(absl::StrCat("key '", rs.Name(name),
                                  "' is not supported with longrope for model_type 'phi3' "
                                  "(transformers 4.46.3's Phi3Config accepts only type, "
                                  "short_factor and long_factor)"));
    }
  }
  RopeScalingConfig& out = c.rope_scaling;
  out.type = RopeScalingType::kLongRope;
  const size_t half = static_cast<size_t>(c.head_dim / 2);
  for (const auto& [name, field] :
       {std::pair<const char*, std::vector<float>*>{"short_factor", &out.short_factor},
        std::pair<const char*, std::vector<float>*>{"long_factor", &out.long_factor}}) {
    const json* v = rs.Find(name);
    if (v == nullptr) return rs.Missing(name);
    if (!v->is_array()) return rs.TypeError(name, *v, "a list of numbers");
    if (v->size() != half) {
      return r.Error(absl::StrCat("key '", rs.Name(name), "' must have head_dim / 2 = ", half,
                                  " values, got ", v->size()));
    }
    field->clear();
    for (const json& item : *v) {
      if (!item.is_number()) return rs.TypeError(name, *v, "a list of numbers");
      const double x = item.get<double>();
      const float stored = static_cast<float>(x);
      if (!(x > 0) || !std::isfinite(stored) || !(stored > 0)) {
        return r.Error(absl::StrCat("key '", rs.Name(name),
                                    "' must hold positive numbers in the float range, got ", x));
      }
      field->push_back(stored);
    }
  }
  ASSIGN_OR_RETURN(out.original_max_position_embeddings,
                   r.PositiveInt("original_max_position_embeddings", 4096));
  return absl::OkStatus();
}

// `key` is "rope_scaling" (transformers 4) or "rope_parameters" (transformers 5, which also
// moves rope_theta inside it).
absl::Status ParseRopeScaling(const KeyReader& r, const char* key, ModelConfig& c) {
  const json* v = r.Find(key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_object()) return r.TypeError(key, *v, "null or an object");
  const KeyReader rs(*v, r.source(), absl::StrCat(key, "."));
  if (std::string_view(key) == "rope_parameters") {
    ASSIGN_OR_RETURN(c.rope_theta, rs.PositiveNumber("rope_theta", c.rope_theta));
  }
  // transformers renamed "type" to "rope_type"; checkpoints carry either.
  ASSIGN_OR_RETURN(std::optional<std::string> type, rs.OptString("type"));
  if (!type.has_value()) {
    ASSIGN_OR_RETURN(type, rs.OptString("rope_type"));
  }
  if (!type.has_value()) return rs.Missing("type");
  RopeScalingConfig& out = c.rope_scaling;
  out = RopeScalingConfig();
  if (*type == "default") return absl::OkStatus();  // unscaled RoPE, spelled out
  const std::string type_key = absl::StrCat(key, ".type");
  const bool phi3 = c.model_type == "phi3";
  // Phi3Config (transformers 4.46.3) renames the legacy "su" and "yarn" to "longrope".
  const bool longrope = *type == "longrope" || (phi3 && (*type == "su" || *type == "yarn"));
  if (longrope && !phi3) {
    return r.Error(
        absl::StrCat(type_key,
                     " 'longrope' is supported for model_type 'phi3' only: transformers 4.46.3 "
                     "switches between short_factor and long_factor with the sequence length in "
                     "its Phi-3 class alone, and its '",
                     c.model_type, "' class uses long_factor at every length"));
  }
  if (phi3 && !longrope) {
    return r.Error(absl::StrCat(type_key, " '", *type,
                                "' is not supported for model_type 'phi3' (supported: longrope, "
                                "as transformers 4.46.3's Phi3Config)"));
  }
  if (longrope) return ParseLongRope(r, rs, key, c);
  if (*type != "linear" && *type != "llama3" && *type != "yarn" && *type != "dynamic") {
    return r.Error(
        absl::StrCat(type_key, " '", *type,
                     "' is not supported (supported: default, linear, dynamic, llama3, yarn)"));
  }
  // A positive number that the f32 RoPE arithmetic can hold (the kernels round it to f32).
  auto check_positive = [&](const char* name, double v) -> absl::Status {
    if (!(v > 0)) {
      return r.Error(absl::StrCat("key '", rs.Name(name), "' must be positive, got ", v));
    }
    const float stored = static_cast<float>(v);
    if (!std::isfinite(stored) || !(stored > 0)) {
      return r.Error(absl::StrCat("key '", rs.Name(name), "' is out of the float range, got ", v));
    }
    return absl::OkStatus();
  };
  auto positive = [&](const char* name) -> absl::StatusOr<double> {
    ASSIGN_OR_RETURN(const std::optional<double> v, rs.OptNumber(name));
    if (!v.has_value()) return rs.Missing(name);
    RETURN_IF_ERROR(check_positive(name, *v));
    return *v;
  };
  ASSIGN_OR_RETURN(out.factor, positive("factor"));
  if (*type == "linear") {
    out.type = RopeScalingType::kLinear;
    return absl::OkStatus();
  }
  if (*type == "dynamic") {
    // transformers 4.46.3 reads factor only (original_max_position_embeddings is allowed
    // but unused: the scaling starts past max_position_embeddings).
    out.type = RopeScalingType::kDynamic;
    return absl::OkStatus();
  }
  if (*type == "llama3") {
    out.type = RopeScalingType::kLlama3;
    ASSIGN_OR_RETURN(out.low_freq_factor, positive("low_freq_factor"));
    ASSIGN_OR_RETURN(out.high_freq_factor, positive("high_freq_factor"));
    if (!(out.high_freq_factor > out.low_freq_factor)) {
      return r.Error(absl::StrCat("key '", rs.Name("high_freq_factor"), "' must be greater than '",
                                  rs.Name("low_freq_factor"), "' (", out.low_freq_factor, "), got ",
                                  out.high_freq_factor));
    }
    ASSIGN_OR_RETURN(out.original_max_position_embeddings,
                     rs.PositiveInt("original_max_position_embeddings"));
    return absl::OkStatus();
  }
  out.type = RopeScalingType::kYarn;
  // transformers 4.46.3 reads neither; later versions derive the attention factor from them.
  for (const char* unread : {"mscale", "mscale_all_dim"}) {
    if (rs.Find(unread) != nullptr) {
      return r.Error(absl::StrCat("key '", rs.Name(unread),
                                  "' is not supported: transformers 4.46.3 ignores it and later "
                                  "versions change the attention factor with it"));
    }
  }
  ASSIGN_OR_RETURN(out.original_max_position_embeddings,
                   rs.Int("original_max_position_embeddings", 0, 1));
  ASSIGN_OR_RETURN(const std::optional<double> attention, rs.OptNumber("attention_factor"));
  if (attention.has_value()) {
    RETURN_IF_ERROR(check_positive("attention_factor", *attention));
    out.attention_factor = *attention;
  }
  // transformers: rope_scaling.get("beta_fast") or 32 (so 0 also means the default).
  for (const auto& [name, field] : {std::pair<const char*, double*>{"beta_fast", &out.beta_fast},
                                    std::pair<const char*, double*>{"beta_slow", &out.beta_slow}}) {
    ASSIGN_OR_RETURN(const std::optional<double> v, rs.OptNumber(name));
    if (!v.has_value() || *v == 0) continue;
    RETURN_IF_ERROR(check_positive(name, *v));
    *field = *v;
  }
  return absl::OkStatus();
}

absl::Status ParseNorms(const KeyReader& r, ModelConfig& c) {
  ASSIGN_OR_RETURN(const std::optional<std::string> placement, r.OptString("norm_placement"));
  if (placement.has_value()) {
    bool found = false;
    for (const NormPlacement p : kAllPlacements) {
      if (NormPlacementName(p) == *placement) {
        c.norm_placement = p;
        found = true;
      }
    }
    if (!found) {
      std::vector<std::string> names;
      for (const NormPlacement p : kAllPlacements) names.emplace_back(NormPlacementName(p));
      return r.Error(absl::StrCat("unknown norm_placement '", *placement,
                                  "' (allowed: ", absl::StrJoin(names, ", "), ")"));
    }
  }

  ASSIGN_OR_RETURN(const std::optional<std::string> type, r.OptString("norm_type"));
  if (type.has_value()) {
    static constexpr std::pair<const char*, NormType> kTypes[] = {
        {"rmsnorm", NormType::kRmsNorm}, {"layernorm", NormType::kLayerNorm}};
    ASSIGN_OR_RETURN(c.norm_type, ParseEnum(r, "norm_type", *type, kTypes));
  }
  ASSIGN_OR_RETURN(c.norm_bias, r.Bool("norm_bias", c.norm_type == NormType::kLayerNorm));

  // norm_eps wins; Llama-family configs name it rms_norm_eps.
  ASSIGN_OR_RETURN(const std::optional<double> rms_eps, r.OptNumber("rms_norm_eps"));
  // Phi3Config's rms_norm_eps defaults to 1e-5.
  const double eps_default = c.model_type == "phi3" ? 1e-5 : 1e-6;
  ASSIGN_OR_RETURN(const double eps, r.PositiveNumber("norm_eps", rms_eps.value_or(eps_default)));
  if (!(rms_eps.value_or(1.0) > 0)) {
    return r.Error(absl::StrCat("key 'rms_norm_eps' must be positive, got ", *rms_eps));
  }
  c.norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(const double skip, r.PositiveNumber("skip_scale", 1.0));
  ASSIGN_OR_RETURN(const double branch, r.PositiveNumber("branch_scale", 1.0));
  c.skip_scale = static_cast<float>(skip);
  c.branch_scale = static_cast<float>(branch);

  bool final_norm_default = false;
  switch (c.norm_placement) {
    case NormPlacement::kPre:
    case NormPlacement::kSandwich:
    case NormPlacement::kMix:
      final_norm_default = true;
      break;
    case NormPlacement::kPost:
    case NormPlacement::kSpan:
    case NormPlacement::kB2t:
    case NormPlacement::kDeepNorm:
      final_norm_default = false;
      break;
  }
  ASSIGN_OR_RETURN(c.final_norm, r.Bool("final_norm", final_norm_default));

  ASSIGN_OR_RETURN(c.mix_post_layers, r.Int("mix_post_layers", 0, 0));
  if (c.mix_post_layers > c.num_layers) {
    return r.Error(absl::StrCat("key 'mix_post_layers' (", c.mix_post_layers,
                                ") exceeds num_hidden_layers (", c.num_layers, ")"));
  }
  // A nonzero count would silently do nothing under another placement.
  if (c.mix_post_layers > 0 && c.norm_placement != NormPlacement::kMix) {
    return r.Error(absl::StrCat("key 'mix_post_layers' is set but norm_placement is '",
                                std::string(NormPlacementName(c.norm_placement)), "', not 'mix'"));
  }
  return absl::OkStatus();
}

absl::Status ParseMoe(const KeyReader& r, ModelConfig& c) {
  // Mixtral says num_local_experts, Qwen2-MoE and OLMoE say num_experts.
  ASSIGN_OR_RETURN(const int local_experts, r.Int("num_local_experts", 0, 0));
  ASSIGN_OR_RETURN(const int experts, r.Int("num_experts", 0, 0));
  if (local_experts > 0 && experts > 0 && local_experts != experts) {
    return r.Error(absl::StrCat("keys 'num_local_experts' (", local_experts,
                                ") and 'num_experts' (", experts, ") disagree"));
  }
  const char* const experts_key = local_experts > 0 ? "num_local_experts" : "num_experts";
  MoeConfig& m = c.moe;
  m.num_experts = std::max(local_experts, experts);

  const std::string& type = c.model_type;
  const bool moe_type =
      type == "mixtral" || type == "qwen2_moe" || type == "qwen3_moe" || type == "olmoe";
  if (moe_type && m.num_experts == 0) {
    return r.Error(absl::StrCat("model_type '", type, "' needs a positive num_experts (or ",
                                "num_local_experts)"));
  }
  if (m.num_experts == 0) return absl::OkStatus();
  if (!moe_type && type != "spanserve") {
    return r.Error(absl::StrCat("key '", experts_key, "' is set but model_type '", type,
                                "' is a dense architecture"));
  }
  // A SpanServe MoE model uses the Qwen2-MoE tensor names (shared expert included); so does
  // Qwen3-MoE (without one).
  m.layout = type == "mixtral" ? MoeLayout::kMixtral
             : type == "olmoe" ? MoeLayout::kOlmoe
                               : MoeLayout::kQwen2Moe;

  ASSIGN_OR_RETURN(m.top_k, r.PositiveInt("num_experts_per_tok"));
  if (m.top_k > m.num_experts) {
    return r.Error(absl::StrCat("key 'num_experts_per_tok' (", m.top_k,
                                ") exceeds the number of experts (", m.num_experts, ")"));
  }
  // Mixtral always renormalises: its softmax runs over the top-k logits only.
  ASSIGN_OR_RETURN(m.norm_topk_prob, r.Bool("norm_topk_prob", m.layout == MoeLayout::kMixtral));
  // Mixtral and OLMoE experts are intermediate_size wide; Qwen2-MoE names the width.
  std::optional<int> expert_width_default;
  switch (m.layout) {
    case MoeLayout::kMixtral:
    case MoeLayout::kOlmoe:
      expert_width_default = c.intermediate_size;
      break;
    case MoeLayout::kQwen2Moe:
      break;
  }
  ASSIGN_OR_RETURN(m.moe_intermediate_size,
                   r.PositiveInt("moe_intermediate_size", expert_width_default));
  ASSIGN_OR_RETURN(m.shared_expert_intermediate_size,
                   r.Int("shared_expert_intermediate_size", 0, 0));
  // Qwen3MoeConfig has no shared expert; transformers ignores the key there.
  if (type == "qwen3_moe") m.shared_expert_intermediate_size = 0;
  ASSIGN_OR_RETURN(m.decoder_sparse_step, r.PositiveInt("decoder_sparse_step", 1));
  ASSIGN_OR_RETURN(m.mlp_only_layers, r.IntList("mlp_only_layers", /*allow_scalar=*/false));
  for (const int layer : m.mlp_only_layers) {
    if (layer >= c.num_layers) {
      return r.Error(absl::StrCat("key 'mlp_only_layers' lists layer ", layer,
                                  ", beyond num_hidden_layers (", c.num_layers, ")"));
    }
  }
  ASSIGN_OR_RETURN(m.first_k_dense, r.Int("first_k_dense_replace", 0, 0));
  if (m.first_k_dense > c.num_layers) {
    return r.Error(absl::StrCat("key 'first_k_dense_replace' (", m.first_k_dense,
                                ") exceeds num_hidden_layers (", c.num_layers, ")"));
  }
  ASSIGN_OR_RETURN(const std::optional<std::string> scoring, r.OptString("scoring_func"));
  if (scoring.has_value()) {
    static constexpr std::pair<const char*, RouterScoring> kScorings[] = {
        {"softmax", RouterScoring::kSoftmax}, {"sigmoid", RouterScoring::kSigmoid}};
    ASSIGN_OR_RETURN(m.scoring, ParseEnum(r, "scoring_func", *scoring, kScorings));
  }
  return absl::OkStatus();
}

// sliding_window, use_sliding_window and max_window_layers as transformers 4.46.3 reads
// them. Mistral, Mixtral and Phi-3: sliding_window on every layer (null: none; an absent key
// is MistralConfig's default 4096 for mistral, None for mixtral and phi3; Phi-3's eager mask
// applies it as Mistral's). Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE: only when use_sliding_window
// is true (default false), sliding_window (absent: 4096), on layers >= max_window_layers
// (absent: 28). Gemma 2: sliding_window (absent: 4096, null: none) on the even layers
// (ModelConfig::LayerSlidingWindow); Gemma 3: sliding_window (absent: 4096) on its local
// layers (ParseGemma3). Other model types ignore the keys.
absl::Status ParseSlidingWindow(const KeyReader& r, ModelConfig& c) {
  const std::string& type = c.model_type;
  const bool mistral_like = type == "mistral" || type == "mixtral" || type == "phi3";
  const bool qwen_like =
      type == "qwen2" || type == "qwen2_moe" || type == "qwen3" || type == "qwen3_moe";
  if (type == "gemma2") {
    // Gemma2Config: sliding_window 4096 when absent; null: none (every layer global).
    if (r.Has("sliding_window") && r.Find("sliding_window") == nullptr) return absl::OkStatus();
    ASSIGN_OR_RETURN(c.sliding_window, r.PositiveInt("sliding_window", 4096));
    return absl::OkStatus();
  }
  if (type == "gemma3_text") {
    // Gemma3TextConfig: 4096 when absent; its local layers need one (transformers' hybrid
    // cache refuses null).
    if (r.Has("sliding_window") && r.Find("sliding_window") == nullptr) {
      return r.Error(absl::StrCat("key '", r.Name("sliding_window"),
                                  "' must be a positive integer with model_type 'gemma3_text', "
                                  "got null"));
    }
    ASSIGN_OR_RETURN(c.sliding_window, r.PositiveInt("sliding_window", 4096));
    return absl::OkStatus();
  }
  if (!mistral_like && !qwen_like) return absl::OkStatus();
  if (qwen_like) {
    ASSIGN_OR_RETURN(const bool use, r.Bool("use_sliding_window", false));
    ASSIGN_OR_RETURN(c.max_window_layers, r.Int("max_window_layers", 28, 0));
    if (!use) return absl::OkStatus();
  }
  // Absent and null differ here: transformers writes null for "no window".
  std::optional<int> fallback;
  if (!r.Has("sliding_window") && type != "mixtral" && type != "phi3") fallback = 4096;
  if (r.Find("sliding_window") == nullptr && !fallback.has_value()) return absl::OkStatus();
  ASSIGN_OR_RETURN(c.sliding_window, r.PositiveInt("sliding_window", fallback));
  return absl::OkStatus();
}

// Gemma 2's attention scale and logit soft-caps, as Gemma2Config reads them:
// query_pre_attn_scalar (absent: 224), attn_logit_softcapping (absent: 50) and
// final_logit_softcapping (absent: 30), each a positive number; a null cap is off.
absl::Status ParseGemma2(const KeyReader& r, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.query_pre_attn_scalar, r.PositiveNumber("query_pre_attn_scalar", 224.0));
  for (const auto& [key, fallback, out] :
       {std::tuple<const char*, double, float*>{"attn_logit_softcapping", 50.0,
                                                &c.attn_logit_softcap},
        std::tuple<const char*, double, float*>{"final_logit_softcapping", 30.0,
                                                &c.final_logit_softcap}}) {
    if (r.Has(key) && r.Find(key) == nullptr) {
      *out = 0.0f;  // null: no capping
      continue;
    }
    ASSIGN_OR_RETURN(const double cap, r.PositiveNumber(key, fallback));
    *out = static_cast<float>(cap);
  }
  return absl::OkStatus();
}

// Gemma 3 (Gemma3TextConfig and Gemma3ForCausalLM, transformers 4.51.3):
// query_pre_attn_scalar (absent: 256); final_logit_softcapping (absent or null: off);
// attn_logit_softcapping must be absent or null (Gemma 3's attention never reads it);
// rope_local_base_freq (absent: 10000) for the local layers; the layer kinds from
// layer_types (as later releases write them) or sliding_window_pattern (absent: 6: layer i is
// global iff (i + 1) % pattern == 0). rope_scaling applies to the global layers only, and
// not dynamic (its per-length rows would differ between the two tables).
absl::Status ParseGemma3(const KeyReader& r, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.query_pre_attn_scalar, r.PositiveNumber("query_pre_attn_scalar", 256.0));
  if (r.Find("attn_logit_softcapping") != nullptr) {
    return r.Error(absl::StrCat(
        "key '", r.Name("attn_logit_softcapping"),
        "' must be null with model_type 'gemma3_text': transformers' Gemma 3 attention never "
        "applies it (and llama.cpp's converter refuses it)"));
  }
  c.attn_logit_softcap = 0.0f;
  c.final_logit_softcap = 0.0f;
  if (r.Find("final_logit_softcapping") != nullptr) {
    ASSIGN_OR_RETURN(const double cap, r.PositiveNumber("final_logit_softcapping", 1.0));
    c.final_logit_softcap = static_cast<float>(cap);
  }
  ASSIGN_OR_RETURN(c.rope_local_base_freq, r.PositiveNumber("rope_local_base_freq", 10000.0));
  ASSIGN_OR_RETURN(const int pattern, r.PositiveInt("sliding_window_pattern", 6));
  c.sliding_layers.assign(static_cast<size_t>(c.num_layers), false);
  for (int i = 0; i < c.num_layers; ++i) c.sliding_layers[i] = (i + 1) % pattern != 0;
  if (const json* types = r.Find("layer_types"); types != nullptr) {
    if (!types->is_array()) return r.TypeError("layer_types", *types, "a list of strings");
    if (types->size() != static_cast<size_t>(c.num_layers)) {
      return r.Error(absl::StrCat("key '", r.Name("layer_types"), "' has ", types->size(),
                                  " entries, expected num_hidden_layers = ", c.num_layers));
    }
    for (int i = 0; i < c.num_layers; ++i) {
      const json& t = (*types)[static_cast<size_t>(i)];
      if (t == "sliding_attention" || t == "full_attention") {
        c.sliding_layers[i] = t == "sliding_attention";
        continue;
      }
      return r.Error(absl::StrCat("key '", r.Name("layer_types"), "' entry ", i, " is ", t.dump(),
                                  " (allowed: \"sliding_attention\", \"full_attention\")"));
    }
  }
  if (c.rope_scaling.type == RopeScalingType::kDynamic) {
    return r.Error(
        "rope_scaling type 'dynamic' is not supported with model_type 'gemma3_text' (supported: "
        "default, linear, llama3, yarn)");
  }
  return absl::OkStatus();
}

// The FFN activation, as transformers 4.46.3 picks it: Gemma's MLP reads hidden_activation
// (null: gelu_pytorch_tanh, hidden_act ignored); every other family reads hidden_act.
absl::Status ParseActivation(const KeyReader& r, ModelConfig& c) {
  const bool gemma =
      c.model_type == "gemma" || c.model_type == "gemma2" || c.model_type == "gemma3_text";
  const char* const key = gemma ? "hidden_activation" : "hidden_act";
  ASSIGN_OR_RETURN(const std::optional<std::string> name, r.OptString(key));
  static constexpr std::pair<const char*, Activation> kActivations[] = {
      {"silu", Activation::kSilu}, {"gelu_pytorch_tanh", Activation::kGeluTanh}};
  c.activation = gemma ? Activation::kGeluTanh : Activation::kSilu;
  if (name.has_value()) {
    ASSIGN_OR_RETURN(c.activation, ParseEnum(r, key, *name, kActivations));
  }
  if (c.activation != Activation::kSilu && c.is_moe()) {
    return r.Error(absl::StrCat("key '", key, "' '", *name,
                                "' is not supported for a mixture-of-experts model (its experts "
                                "run SiLU only)"));
  }
  return absl::OkStatus();
}

// Gemma3TextConfig's defaults (transformers 4.51.3), which an absent key takes: a `gemma3`
// checkpoint's text_config holds only the keys that differ from them.
json Gemma3TextDefaults() {
  return json{{"vocab_size", 262208},
              {"hidden_size", 2304},
              {"intermediate_size", 9216},
              {"num_hidden_layers", 26},
              {"num_attention_heads", 8},
              {"num_key_value_heads", 4},
              {"head_dim", 256},
              {"max_position_embeddings", 131072},
              {"rms_norm_eps", 1e-6},
              {"eos_token_id", 1},
              {"bos_token_id", 2},
              {"tie_word_embeddings", true},
              {"rope_theta", 1000000.0},
              {"query_pre_attn_scalar", 256},
              {"sliding_window", 4096},
              {"rope_local_base_freq", 10000.0},
              {"sliding_window_pattern", 6}};
}

// `prefix` names the object's keys in messages ("text_config." inside a gemma3 config);
// `defaults_applied`: a gemma3_text object already carries Gemma3TextDefaults.
absl::StatusOr<ModelConfig> ParseConfigObject(const json& root, const std::string& source,
                                              const std::string& prefix = "",
                                              bool defaults_applied = false) {
  const KeyReader r(root, source, prefix);
  if (!root.is_object()) {
    return r.Error(absl::StrCat("top level must be a JSON object, got ", root.type_name()));
  }
  ModelConfig c;

  ASSIGN_OR_RETURN(const std::optional<std::string> model_type, r.OptString("model_type"));
  if (!model_type.has_value()) return r.Missing("model_type");
  static constexpr const char* kModelTypes[] = {
      "llama",  "mistral",   "qwen2",   "qwen3",     "gemma",     "gemma2", "gemma3_text",
      "gemma3", "spanserve", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",  "phi3"};
  if (std::find(std::begin(kModelTypes), std::end(kModelTypes), *model_type) ==
      std::end(kModelTypes)) {
    return r.Error(absl::StrCat("unsupported model_type '", *model_type,
                                "' (supported: ", absl::StrJoin(kModelTypes, ", "), ")"));
  }
  if (*model_type == "gemma3") {
    // Gemma3ForConditionalGeneration: the text model is text_config (a Gemma3TextConfig),
    // its tensors under language_model.; the vision tower and projector are not loaded.
    if (!prefix.empty()) return r.Error("a gemma3 config cannot nest another");
    const json* text = r.Find("text_config");
    if (text == nullptr) return r.Missing("text_config");
    if (!text->is_object()) return r.TypeError("text_config", *text, "an object");
    json merged = Gemma3TextDefaults();
    for (auto it = text->begin(); it != text->end(); ++it) merged[it.key()] = it.value();
    const json& inner_type = merged.contains("model_type") ? merged["model_type"] : json();
    if (!inner_type.is_null() && inner_type != "gemma3_text") {
      return r.Error(absl::StrCat("key 'text_config.model_type' must be \"gemma3_text\", got ",
                                  inner_type.dump()));
    }
    merged["model_type"] = "gemma3_text";
    // Gemma3Config's own token ids (e.g. eos_token_id [1, 106]) win over the text model's.
    for (const char* key : {"bos_token_id", "eos_token_id"}) {
      if (r.Find(key) != nullptr) merged[key] = root[key];
    }
    ASSIGN_OR_RETURN(ModelConfig inner, ParseConfigObject(merged, source, "text_config.",
                                                          /*defaults_applied=*/true));
    inner.weights_prefix = "language_model.";
    inner.ignored_prefixes = {"vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                              "model.multi_modal_projector."};
    return inner;
  }
  if (*model_type == "gemma3_text" && !defaults_applied) {
    json merged = Gemma3TextDefaults();
    for (auto it = root.begin(); it != root.end(); ++it) merged[it.key()] = it.value();
    return ParseConfigObject(merged, source, prefix, /*defaults_applied=*/true);
  }
  c.model_type = *model_type;

  ASSIGN_OR_RETURN(c.hidden_size, r.PositiveInt("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, r.PositiveInt("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, r.PositiveInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, r.PositiveInt("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_kv_heads, r.PositiveInt("num_key_value_heads", c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error(absl::StrCat("num_attention_heads (", c.num_heads,
                                ") is not divisible by num_key_value_heads (", c.num_kv_heads,
                                ")"));
  }
  if (r.Find("head_dim") == nullptr && c.hidden_size % c.num_heads != 0) {
    return r.Error(absl::StrCat("hidden_size (", c.hidden_size,
                                ") is not divisible by num_attention_heads (", c.num_heads,
                                ") and head_dim is not given"));
  }
  const bool phi3 = c.model_type == "phi3";
  if (phi3) {
    // transformers 4.46.3's Phi3Attention: head_dim = hidden_size / num_attention_heads,
    // whatever the config says (later releases read head_dim and partial_rotary_factor).
    if (c.hidden_size % c.num_heads != 0) {
      return r.Error(absl::StrCat("hidden_size (", c.hidden_size,
                                  ") is not divisible by num_attention_heads (", c.num_heads,
                                  ") (model_type 'phi3')"));
    }
    ASSIGN_OR_RETURN(const int head_dim, r.PositiveInt("head_dim", c.hidden_size / c.num_heads));
    if (head_dim != c.hidden_size / c.num_heads) {
      return r.Error(absl::StrCat(
          "key 'head_dim' (", head_dim, ") must equal hidden_size / num_attention_heads (",
          c.hidden_size / c.num_heads, ") for model_type 'phi3' (transformers 4.46.3 ignores it)"));
    }
    ASSIGN_OR_RETURN(const std::optional<double> partial, r.OptNumber("partial_rotary_factor"));
    if (partial.has_value() && *partial != 1.0) {
      return r.Error(absl::StrCat("key 'partial_rotary_factor' (", *partial,
                                  ") is not supported: transformers 4.46.3's Phi-3 rotates "
                                  "every dimension and ignores it, later versions do not"));
    }
    c.fused_qkv = true;
    c.fused_gate_up = true;
  }
  ASSIGN_OR_RETURN(c.head_dim, r.PositiveInt("head_dim", c.hidden_size / c.num_heads));
  if (c.head_dim % 2 != 0) {
    // RoPE rotates dimension pairs.
    return r.Error(absl::StrCat("head_dim (", c.head_dim, ") must be even for RoPE"));
  }
  ASSIGN_OR_RETURN(c.rope_theta, r.PositiveNumber("rope_theta", 10000.0));
  RETURN_IF_ERROR(ParseRopeScaling(r, "rope_scaling", c));
  RETURN_IF_ERROR(ParseRopeScaling(r, "rope_parameters", c));
  if (c.rope_scaling.type == RopeScalingType::kYarn && c.rope_theta == 1.0) {
    // find_correction_range divides by ln(rope_theta) (transformers fails on it too).
    return r.Error("key 'rope_theta' must not be 1 with rope_scaling type yarn");
  }
  // Phi3Config's default is 4096.
  ASSIGN_OR_RETURN(c.max_position_embeddings,
                   r.PositiveInt("max_position_embeddings", phi3 ? 4096 : 2048));
  if (c.rope_scaling.type == RopeScalingType::kLongRope) {
    // Phi3LongRoPEScaledRotaryEmbedding, in Python doubles: scale = max / original; 1 when
    // scale <= 1, else sqrt(1 + ln(scale) / ln(original)).
    RopeScalingConfig& rs = c.rope_scaling;
    const double original = rs.original_max_position_embeddings;
    const double scale = c.max_position_embeddings / original;
    if (scale > 1.0 && original == 1) {
      return r.Error(
          "key 'original_max_position_embeddings' must be greater than 1 with "
          "rope_scaling type longrope (its logarithm divides)");
    }
    rs.attention_factor = scale <= 1.0 ? 1.0 : std::sqrt(1 + std::log(scale) / std::log(original));
  }
  if (c.rope_scaling.type == RopeScalingType::kDynamic) {
    if (c.head_dim <= 2) {
      // The base is raised to head_dim / (head_dim - 2).
      return r.Error(absl::StrCat("head_dim (", c.head_dim,
                                  ") must be greater than 2 with rope_scaling type dynamic"));
    }
    if (static_cast<double>(c.max_position_embeddings) * c.rope_scaling.factor >
        static_cast<double>(kMaxDynamicPositions)) {
      return r.Error(absl::StrCat("key 'rope_scaling.factor' (", c.rope_scaling.factor,
                                  ") times max_position_embeddings (", c.max_position_embeddings,
                                  ") exceeds ", kMaxDynamicPositions, " positions"));
    }
  }
  ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  // Gemma 2 is Gemma with sandwich norms, soft-capped logits and alternating windows; Gemma
  // 3 Gemma 2 with per-head q / k norms, two RoPE bases and a layer pattern.
  const bool gemma2 = c.model_type == "gemma2";
  const bool gemma3 = c.model_type == "gemma3_text";
  const bool gemma = c.model_type == "gemma" || gemma2 || gemma3;
  // GemmaConfig (and Gemma2Config, Gemma3TextConfig) ties the embeddings unless told
  // otherwise.
  ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", gemma));
  c.scale_embeddings = gemma;
  c.norm_gain_offset = gemma ? 1.0f : 0.0f;
  ASSIGN_OR_RETURN(c.attention_bias, r.Bool("attention_bias", false));
  // Phi-3 has no biases (Phi3Config has no attention_bias key; transformers ignores one).
  if (phi3) c.attention_bias = false;
  // Qwen2 configs have no attention_bias key, yet their q/k/v projections carry biases.
  if (c.model_type == "qwen2" || c.model_type == "qwen2_moe") c.attention_bias = true;
  // Llama, Qwen3 and OLMoE put the bias on o_proj too; Qwen2 and SpanServe on q/k/v only.
  const bool qwen3 = c.model_type == "qwen3" || c.model_type == "qwen3_moe";
  c.o_proj_bias =
      c.attention_bias && (c.model_type == "llama" || c.model_type == "olmoe" || qwen3 || gemma3);
  // OLMoE normalizes the whole q / k projections, Qwen3 (and Qwen3-MoE) and Gemma 3 each head
  // (before RoPE, all; Gemma 3's with (1 + w) gains).
  c.qk_norm = c.model_type == "olmoe" || qwen3 || gemma3;
  c.qk_norm_per_head = qwen3 || gemma3;
  ASSIGN_OR_RETURN(c.bos_token_ids, r.IntList("bos_token_id", /*allow_scalar=*/true));
  ASSIGN_OR_RETURN(c.eos_token_ids, r.IntList("eos_token_id", /*allow_scalar=*/true));

  RETURN_IF_ERROR(ParseSlidingWindow(r, c));
  if (gemma2) RETURN_IF_ERROR(ParseGemma2(r, c));
  if (gemma3) RETURN_IF_ERROR(ParseGemma3(r, c));
  if (gemma2 || gemma3) c.norm_placement = NormPlacement::kSandwich;
  RETURN_IF_ERROR(ParseNorms(r, c));
  RETURN_IF_ERROR(ParseMoe(r, c));
  RETURN_IF_ERROR(ParseActivation(r, c));
  const NormPlacement gemma_placement =
      gemma2 || gemma3 ? NormPlacement::kSandwich : NormPlacement::kPre;
  if (gemma &&
      (c.norm_placement != gemma_placement || c.norm_type != NormType::kRmsNorm || c.norm_bias)) {
    // The (1 + w) gains are RMSNorm's; Gemma's block is PreNorm, Gemma 2's and 3's
    // SandwichNorm.
    return r.Error(absl::StrCat(
        "keys 'norm_placement', 'norm_type' and 'norm_bias' must keep their defaults (",
        std::string(NormPlacementName(gemma_placement)), ", rmsnorm, false) with model_type '",
        c.model_type, "'"));
  }
  return c;
}

absl::StatusOr<ModelConfig> ParseWithSource(std::string_view json_text, const std::string& source) {
  // Nothing thrown by nlohmann::json may leave this function.
  try {
    const json root = json::parse(json_text);
    return ParseConfigObject(root, source);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

}  // namespace

std::string_view NormPlacementName(NormPlacement p) {
  switch (p) {
    case NormPlacement::kPre:
      return "pre";
    case NormPlacement::kPost:
      return "post";
    case NormPlacement::kSpan:
      return "span";
    case NormPlacement::kB2t:
      return "b2t";
    case NormPlacement::kDeepNorm:
      return "deepnorm";
    case NormPlacement::kSandwich:
      return "sandwich";
    case NormPlacement::kMix:
      return "mix";
  }
  return "?";
}

bool ModelConfig::LayerIsMoe(int layer) const {
  if (!is_moe()) return false;
  if ((layer + 1) % moe.decoder_sparse_step != 0) return false;
  if (layer < moe.first_k_dense) return false;
  return std::find(moe.mlp_only_layers.begin(), moe.mlp_only_layers.end(), layer) ==
         moe.mlp_only_layers.end();
}

int ModelConfig::LayerSlidingWindow(int layer) const {
  if (sliding_window <= 0) return 0;
  const bool qwen_like = model_type == "qwen2" || model_type == "qwen2_moe" ||
                         model_type == "qwen3" || model_type == "qwen3_moe";
  if (model_type == "gemma2") return layer % 2 == 0 ? sliding_window : 0;
  if (model_type == "gemma3_text") return LayerUsesLocalRope(layer) ? sliding_window : 0;
  return qwen_like && layer < max_window_layers ? 0 : sliding_window;
}

bool ModelConfig::LayerUsesLocalRope(int layer) const {
  return layer >= 0 && static_cast<size_t>(layer) < sliding_layers.size() &&
         sliding_layers[static_cast<size_t>(layer)];
}

float ModelConfig::AttentionScale() const {
  if (query_pre_attn_scalar > 0) {
    // transformers: the Python float query_pre_attn_scalar**-0.5, times the f32 scores.
    return static_cast<float>(std::pow(query_pre_attn_scalar, -0.5));
  }
  return 1.0f / std::sqrt(static_cast<float>(head_dim));
}

int ModelConfig::MaxPositions() const {
  if (rope_scaling.type != RopeScalingType::kDynamic) return max_position_embeddings;
  // As vLLM derives the context of a dynamic NTK model: max_position_embeddings × factor.
  const double limit = static_cast<double>(kMaxDynamicPositions);
  const double scaled = std::floor(static_cast<double>(max_position_embeddings) *
                                   std::min(rope_scaling.factor, limit));
  return static_cast<int>(std::clamp(scaled, static_cast<double>(max_position_embeddings),
                                     std::max(limit, 1.0 * max_position_embeddings)));
}

int ModelConfig::KvWindow() const {
  int window = 0;
  for (int layer = 0; layer < num_layers; ++layer) {
    const int w = LayerSlidingWindow(layer);
    if (w <= 0) return 0;
    window = std::max(window, w);
  }
  return window;
}

NormPlacement ModelConfig::LayerPlacement(int layer) const {
  if (norm_placement != NormPlacement::kMix) return norm_placement;
  return layer < mix_post_layers ? NormPlacement::kPost : NormPlacement::kPre;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  return ParseWithSource(json_text, "config.json");
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": not found (a model directory needs one)"));
  }
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  return ParseWithSource(text, path);
}

}  // namespace spanserve::model
