#include "runtime/model/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/meminfo.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "nlohmann/json.hpp"
#include "runtime/gguf/dequantize.h"

namespace spanserve::model {
namespace {

using json = nlohmann::json;
using gguf::GgufFile;
using gguf::TensorInfo;
using gguf::TensorType;

// general.architecture values, each loaded as the config.json model_type of the same name
// (qwen2moe / qwen3moe: qwen2_moe / qwen3_moe; llama with experts: mixtral).
// llama.cpp's converter permutes the Q / K rows of llama only (UnpermuteRows).
constexpr const char* kArchs[] = {"llama", "qwen2", "qwen3",  "qwen2moe", "qwen3moe",
                                  "phi3",  "gemma", "gemma2", "gemma3"};
// The llama3 RoPE divisors and Phi-3's longrope factors (in the config, not weights).
constexpr char kRopeFreqs[] = "rope_freqs.weight";
constexpr char kRopeFactorsLong[] = "rope_factors_long.weight";
constexpr char kRopeFactorsShort[] = "rope_factors_short.weight";

// Whether GgufModelConfig reads tensor `name` (of a model of `model_type`) into the config.
bool IsRopeTensor(const std::string& name, const std::string& model_type) {
  if (name == kRopeFreqs) return true;
  return model_type == "phi3" && (name == kRopeFactorsLong || name == kRopeFactorsShort);
}

// A bad file is INVALID_ARGUMENT, whatever the accessor's code for a missing key.
absl::Status AsInvalid(const absl::Status& s) {
  if (s.ok() || absl::IsInvalidArgument(s)) return s;
  if (absl::IsNotFound(s)) {
    return absl::InvalidArgumentError(absl::StrCat(s.message(), " (a required key)"));
  }
  return s;
}

absl::StatusOr<int64_t> RequiredPositive(const GgufFile& f, const std::string& key) {
  absl::StatusOr<int64_t> v = f.GetInt(key);
  if (!v.ok()) return AsInvalid(v.status());
  if (*v <= 0 || *v > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": metadata key '", key, "' = ", *v, ", expected a positive size"));
  }
  return *v;
}

absl::StatusOr<std::optional<int64_t>> OptionalPositive(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(const int64_t v, RequiredPositive(f, key));
  return std::optional<int64_t>(v);
}

absl::StatusOr<std::optional<int64_t>> OptionalTokenId(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(const int64_t v, f.GetInt(key));
  return std::optional<int64_t>(v);
}

// GGUF tensor name -> the runtime's name; empty if the architecture has no such tensor.
// `mixtral`: experts under Mixtral's names (block_sparse_moe, w1 / w2 / w3), else under
// Qwen2-MoE's (mlp.gate, mlp.experts.E.*_proj, mlp.shared_expert*).
// `phi3`: the fused attn_qkv (q, k, v rows) and ffn_up (gate rows, then up) are the
// checkpoint's qkv_proj and gate_up_proj. `gemma2` (Gemma 2 and Gemma 3): the sandwich norms,
// attn_norm / post_attention_norm around the attention and ffn_norm / post_ffw_norm around
// the FFN.
std::string RuntimeName(const std::string& name, bool mixtral, bool phi3, bool gemma2) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (!absl::StartsWith(name, "blk.")) return "";
  const size_t dot = name.find('.', 4);
  int layer = 0;
  if (dot == std::string::npos || !absl::SimpleAtoi(name.substr(4, dot - 4), &layer) || layer < 0) {
    return "";
  }
  std::string rest = name.substr(dot + 1);
  std::string suffix;
  for (const char* s : {".weight", ".bias"}) {
    if (absl::EndsWith(rest, s)) suffix = s;
  }
  if (suffix.empty()) return "";
  rest.resize(rest.size() - suffix.size());
  if (phi3 && rest == "attn_qkv") {
    return absl::StrCat("model.layers.", layer, ".self_attn.qkv_proj", suffix);
  }
  if (phi3 && rest == "ffn_up") {
    return absl::StrCat("model.layers.", layer, ".mlp.gate_up_proj", suffix);
  }
  if (gemma2) {
    static constexpr std::pair<const char*, const char*> kSandwich[] = {
        {"post_attention_norm", "post_attention_layernorm"},
        {"ffn_norm", "pre_feedforward_layernorm"},
        {"post_ffw_norm", "post_feedforward_layernorm"},
    };
    for (const auto& [from, to] : kSandwich) {
      if (rest == from) return absl::StrCat("model.layers.", layer, ".", to, suffix);
    }
  }
  static constexpr std::pair<const char*, const char*> kBlock[] = {
      {"attn_norm", "input_layernorm"},    {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},      {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},       {"attn_q_norm", "self_attn.q_norm"},
      {"attn_k_norm", "self_attn.k_norm"},
  };
  for (const auto& [from, to] : kBlock) {
    if (rest == from) return absl::StrCat("model.layers.", layer, ".", to, suffix);
  }
  // MoE: the router, and each of the gate / down / up matrices of every expert stacked in
  // one 3-D tensor, named here with `*` for the expert (GgufWeights splits it), or one tensor
  // per expert in older files (ffn_gate.E); qwen2moe's shared expert and its gate.
  static constexpr std::pair<const char*, const char*> kMixtralExperts[] = {
      {"ffn_gate", "w1"}, {"ffn_down", "w2"}, {"ffn_up", "w3"}};
  static constexpr std::pair<const char*, const char*> kQwenExperts[] = {
      {"ffn_gate", "gate_proj"}, {"ffn_down", "down_proj"}, {"ffn_up", "up_proj"}};
  const std::string moe =
      absl::StrCat("model.layers.", layer, mixtral ? ".block_sparse_moe." : ".mlp.");
  if (rest == "ffn_gate_inp") return absl::StrCat(moe, "gate", suffix);
  if (!mixtral) {
    if (rest == "ffn_gate_inp_shexp") return absl::StrCat(moe, "shared_expert_gate", suffix);
    for (const auto& [from, to] : kQwenExperts) {
      if (rest == absl::StrCat(from, "_shexp")) {
        return absl::StrCat(moe, "shared_expert.", to, suffix);
      }
    }
  }
  for (const auto& [from, to] : mixtral ? kMixtralExperts : kQwenExperts) {
    if (rest == absl::StrCat(from, "_exps")) return absl::StrCat(moe, "experts.*.", to, suffix);
    int expert = 0;
    if (absl::StartsWith(rest, absl::StrCat(from, ".")) &&
        absl::SimpleAtoi(rest.substr(std::string_view(from).size() + 1), &expert) && expert >= 0) {
      return absl::StrCat(moe, "experts.", expert, ".", to, suffix);
    }
  }
  return "";
}

// Adds `view` as `name`; a stacked expert tensor (`*` in the name, shape [experts, rows,
// cols]) is added as one [rows, cols] tensor per expert, each a slice of the same data.
absl::Status AddTensorOrExperts(WeightStore& store, const std::string& name, TensorView view,
                                const std::string& origin) {
  const size_t star = name.find('*');
  if (star == std::string::npos) return store.AddTensor(name, std::move(view), origin);
  if (view.shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", origin,
                                                   " holds stacked experts but has ",
                                                   view.shape.size(), " dims, expected 3"));
  }
  const int64_t experts = view.shape[0];
  TensorView slice = view;
  slice.shape = {view.shape[1], view.shape[2]};
  const int64_t slice_bytes = slice.bytes();
  for (int64_t e = 0; e < experts; ++e) {
    slice.data = static_cast<const uint8_t*>(view.data) + e * slice_bytes;
    RETURN_IF_ERROR(store.AddTensor(absl::StrCat(name.substr(0, star), e, name.substr(star + 1)),
                                    slice, absl::StrCat(origin, " expert ", e)));
  }
  return absl::OkStatus();
}

// Undoes llama.cpp's rotary permutation of Q/K rows in place: within each head of `dim`
// rows, GGUF row 2i + j holds Hugging Face row j·dim/2 + i (j ∈ {0, 1}).
void UnpermuteRows(void* data, int64_t rows, int64_t row_bytes, int64_t heads) {
  const int64_t dim = rows / heads;
  const int64_t half = dim / 2;
  auto* bytes = static_cast<uint8_t*>(data);
  std::vector<uint8_t> head(static_cast<size_t>(dim * row_bytes));
  for (int64_t h = 0; h < heads; ++h) {
    uint8_t* base = bytes + h * dim * row_bytes;
    std::memcpy(head.data(), base, head.size());
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(base + (j * half + i) * row_bytes, head.data() + (2 * i + j) * row_bytes,
                    row_bytes);
      }
    }
  }
}

// The block format a GGUF tensor type keeps in memory, or kNone.
kernels::QuantType KeptQuant(TensorType type) {
  switch (type) {
    case TensorType::kQ8_0:
      return kernels::QuantType::kQ8_0;
    case TensorType::kQ4_0:
      return kernels::QuantType::kQ4_0;
    case TensorType::kQ4_1:
      return kernels::QuantType::kQ4_1;
    case TensorType::kQ5_0:
      return kernels::QuantType::kQ5_0;
    case TensorType::kQ5_1:
      return kernels::QuantType::kQ5_1;
    case TensorType::kQ4_K:
      return kernels::QuantType::kQ4_K;
    case TensorType::kQ5_K:
      return kernels::QuantType::kQ5_K;
    case TensorType::kQ6_K:
      return kernels::QuantType::kQ6_K;
    case TensorType::kQ2_K:
      return kernels::QuantType::kQ2_K;
    case TensorType::kQ3_K:
      return kernels::QuantType::kQ3_K;
    case TensorType::kIQ4_NL:
      return kernels::QuantType::kIQ4_NL;
    case TensorType::kIQ4_XS:
      return kernels::QuantType::kIQ4_XS;
    default:
      return kernels::QuantType::kNone;
  }
}

}  // namespace

bool IsGgufPath(const std::string& path) {
  std::error_code ec;
  return absl::EndsWith(path, ".gguf") || std::filesystem::is_regular_file(path, ec);
}

absl::StatusOr<ModelConfig> GgufModelConfig(const GgufFile& f) {
  absl::StatusOr<std::string_view> arch = f.GetString("general.architecture");
  if (!arch.ok()) return AsInvalid(arch.status());
  if (std::find(std::begin(kArchs), std::end(kArchs), *arch) == std::end(kArchs)) {
    return absl::UnimplementedError(
        absl::StrCat(f.path(), ": general.architecture '", std::string(*arch),
                     "' is not supported (supported: ", absl::StrJoin(kArchs, ", "), ")"));
  }
  // Metadata keys are under the architecture's prefix (qwen2.embedding_length, ...).
  const std::string a(*arch);
  // MoE: llama with expert_count > 0 is Mixtral's layout (softmax router, top-k renormalised,
  // SwiGLU experts, no shared expert), loaded as a mixtral config; qwen2moe (with a gated
  // shared expert) and qwen3moe (without) are Qwen2-MoE's layout.
  const bool qwen2moe = a == "qwen2moe";
  const bool qwen_moe = qwen2moe || a == "qwen3moe";
  json moe;  // null: dense
  int64_t used = 0;
  if (f.Has(a + ".expert_count") || qwen_moe) {
    ASSIGN_OR_RETURN(const int64_t experts, qwen_moe ? RequiredPositive(f, a + ".expert_count")
                                                     : f.GetInt(a + ".expert_count"));
    if (experts > 0 && a != "llama" && !qwen_moe) {
      return absl::UnimplementedError(absl::StrCat(
          f.path(), ": ", a, ".expert_count = ", experts,
          ": MoE GGUF models are supported for the llama (Mixtral), qwen2moe and qwen3moe "
          "architectures only"));
    }
    if (experts > 0) {
      ASSIGN_OR_RETURN(used, RequiredPositive(f, a + ".expert_used_count"));
      moe = {{qwen_moe ? "num_experts" : "num_local_experts", experts},
             {"num_experts_per_tok", used}};
      ASSIGN_OR_RETURN(const std::optional<int64_t> expert_ffn,
                       OptionalPositive(f, a + ".expert_feed_forward_length"));
      if (expert_ffn.has_value()) moe["moe_intermediate_size"] = *expert_ffn;
      if (f.Has(a + ".expert_shared_count")) {
        // qwen2moe has one shared expert (llama.cpp ignores the key there).
        ASSIGN_OR_RETURN(const int64_t shared, f.GetInt(a + ".expert_shared_count"));
        if (shared != 0 && !(qwen2moe && shared == 1)) {
          return absl::UnimplementedError(absl::StrCat(
              f.path(), ": ", a, ".expert_shared_count = ", shared, ": ",
              qwen2moe ? "only one shared expert is supported in a qwen2moe GGUF"
                       : absl::StrCat("shared experts are not supported in a ", a, " GGUF")));
        }
      }
      if (f.Has(a + ".expert_gating_func")) {
        // llama.cpp: 1 softmax, 2 sigmoid.
        ASSIGN_OR_RETURN(const int64_t gating, f.GetInt(a + ".expert_gating_func"));
        if (gating != 1) {
          return absl::UnimplementedError(
              absl::StrCat(f.path(), ": ", a, ".expert_gating_func = ", gating,
                           ": only softmax routing (1) is supported in a ", a, " GGUF"));
        }
      }
      if (qwen_moe) {
        // llama.cpp renormalises the top-k weights for qwen3moe and not for qwen2moe, whatever
        // the checkpoint's norm_topk_prob (which its converter does not write);
        // A.expert_weights_norm, where present, says so explicitly.
        bool norm = !qwen2moe;
        if (f.Has(a + ".expert_weights_norm")) {
          absl::StatusOr<bool> v = f.GetBool(a + ".expert_weights_norm");
          if (!v.ok()) return AsInvalid(v.status());
          norm = *v;
        }
        moe["norm_topk_prob"] = norm;
      }
    }
  }
  ASSIGN_OR_RETURN(const int64_t hidden, RequiredPositive(f, a + ".embedding_length"));
  ASSIGN_OR_RETURN(const int64_t ffn, RequiredPositive(f, a + ".feed_forward_length"));
  ASSIGN_OR_RETURN(const int64_t layers, RequiredPositive(f, a + ".block_count"));
  if (qwen_moe) {
    // llama.cpp's defaults: experts of feed_forward_length / expert_used_count, a shared
    // expert of feed_forward_length.
    if (!moe.contains("moe_intermediate_size")) moe["moe_intermediate_size"] = ffn / used;
    if (qwen2moe) {
      ASSIGN_OR_RETURN(const std::optional<int64_t> shared_ffn,
                       OptionalPositive(f, a + ".expert_shared_feed_forward_length"));
      moe["shared_expert_intermediate_size"] = shared_ffn.value_or(ffn);
    }
    // Layers without a router are dense (a checkpoint's mlp_only_layers or
    // decoder_sparse_step, which the metadata does not carry; llama.cpp itself expects every
    // layer to be sparse). A file with fewer tensors than layers fails on the missing ones.
    std::vector<int64_t> dense;
    const int64_t checked = std::min<int64_t>(layers, static_cast<int64_t>(f.tensors().size()));
    for (int64_t l = 0; l < checked; ++l) {
      if (f.FindTensor(absl::StrCat("blk.", l, ".ffn_gate_inp.weight")) == nullptr) {
        dense.push_back(l);
      }
    }
    moe["mlp_only_layers"] = dense;
  }
  ASSIGN_OR_RETURN(const int64_t context, RequiredPositive(f, a + ".context_length"));
  ASSIGN_OR_RETURN(const int64_t heads, RequiredPositive(f, a + ".attention.head_count"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> kv_heads,
                   OptionalPositive(f, a + ".attention.head_count_kv"));
  if (kv_heads.has_value() && heads % *kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, ".attention.head_count (",
                                                   heads, ") is not divisible by ", a,
                                                   ".attention.head_count_kv (", *kv_heads, ")"));
  }
  ASSIGN_OR_RETURN(const std::optional<int64_t> key_length,
                   OptionalPositive(f, a + ".attention.key_length"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> value_length,
                   OptionalPositive(f, a + ".attention.value_length"));
  if (!key_length.has_value() && hidden % heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, ".embedding_length (", hidden,
                                                   ") is not divisible by ", a,
                                                   ".attention.head_count (", heads, ")"));
  }
  const int64_t head_dim = key_length.value_or(hidden / heads);
  if (value_length.has_value() && *value_length != head_dim) {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": ", a, ".attention.value_length (", *value_length,
        ") differs from the key length (", head_dim, "), which the runtime does not support"));
  }
  absl::StatusOr<double> eps = f.GetFloat(a + ".attention.layer_norm_rms_epsilon");
  if (!eps.ok()) return AsInvalid(eps.status());
  // Finite too: the config below is JSON, where inf and NaN become null, i.e. "use the
  // default", and the eps is then taken from here as it is.
  if (!(*eps > 0) || !std::isfinite(*eps)) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                   ".attention.layer_norm_rms_epsilon = ", *eps,
                                                   ", expected a positive finite number"));
  }
  double theta = 10000.0;
  if (f.Has(a + ".rope.freq_base")) {
    ASSIGN_OR_RETURN(theta, f.GetFloat(a + ".rope.freq_base"));
    if (!(theta > 0) || !std::isfinite(theta)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, ".rope.freq_base = ", theta,
                                                     ", expected a positive finite number"));
    }
  }
  if (f.Has(a + ".rope.dimension_count")) {
    ASSIGN_OR_RETURN(const int64_t rot, f.GetInt(a + ".rope.dimension_count"));
    if (rot != head_dim) {
      return absl::UnimplementedError(
          absl::StrCat(f.path(), ": ", a, ".rope.dimension_count = ", rot, " but the head size is ",
                       head_dim, ": partial rotary embeddings are not supported"));
    }
  }
  // rope.scaling.*: none, linear or yarn, mapped onto config.json's rope_scaling.
  json rope_scaling;  // null: unscaled
  auto scaling_factor = [&]() -> absl::StatusOr<double> {
    absl::StatusOr<double> factor = f.GetFloat(a + ".rope.scaling.factor");
    if (!factor.ok()) return AsInvalid(factor.status());
    if (!(*factor > 0) || !std::isfinite(*factor)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                     ".rope.scaling.factor = ", *factor,
                                                     ", expected a positive finite number"));
    }
    return *factor;
  };
  if (f.Has(a + ".rope.scaling.type")) {
    ASSIGN_OR_RETURN(const std::string_view type, f.GetString(a + ".rope.scaling.type"));
    if (type == "linear") {
      ASSIGN_OR_RETURN(const double factor, scaling_factor());
      if (factor != 1.0) rope_scaling = {{"type", "linear"}, {"factor", factor}};
    } else if (type == "yarn") {
      ASSIGN_OR_RETURN(const double factor, scaling_factor());
      rope_scaling = {{"type", "yarn"}, {"factor", factor}};
      if (f.Has(a + ".rope.scaling.original_context_length")) {
        ASSIGN_OR_RETURN(rope_scaling["original_max_position_embeddings"],
                         RequiredPositive(f, a + ".rope.scaling.original_context_length"));
      }
      for (const auto& [gguf_key, config_key] :
           {std::pair<const char*, const char*>{".rope.scaling.yarn_beta_fast", "beta_fast"},
            std::pair<const char*, const char*>{".rope.scaling.yarn_beta_slow", "beta_slow"}}) {
        if (!f.Has(a + gguf_key)) continue;
        absl::StatusOr<double> v = f.GetFloat(a + gguf_key);
        if (!v.ok()) return AsInvalid(v.status());
        if (!(*v > 0) || !std::isfinite(*v)) {
          return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, gguf_key, " = ", *v,
                                                         ", expected a positive finite number"));
        }
        rope_scaling[config_key] = *v;
      }
      // llama.cpp's other YaRN knobs have no transformers counterpart: only their neutral
      // values are accepted.
      for (const auto& [gguf_key, neutral] :
           {std::pair<const char*, double>{".rope.scaling.attn_factor", 1.0},
            std::pair<const char*, double>{".rope.scaling.yarn_attn_factor", 1.0},
            std::pair<const char*, double>{".rope.scaling.yarn_ext_factor", 1.0},
            std::pair<const char*, double>{".rope.scaling.yarn_log_multiplier", 0.0}}) {
        if (!f.Has(a + gguf_key)) continue;
        absl::StatusOr<double> v = f.GetFloat(a + gguf_key);
        if (!v.ok()) return AsInvalid(v.status());
        if (*v != neutral) {
          return absl::UnimplementedError(
              absl::StrCat(f.path(), ": ", a, gguf_key, " = ", *v, " is not supported (only ",
                           neutral, "): transformers' YaRN has no such parameter"));
        }
      }
    } else if (type != "none") {
      return absl::UnimplementedError(
          absl::StrCat(f.path(), ": ", a, ".rope.scaling.type '", std::string(type),
                       "' is not supported (supported: none, linear, yarn)"));
    }
  } else if (f.Has(a + ".rope.scale_linear")) {  // the older spelling
    ASSIGN_OR_RETURN(const double factor, f.GetFloat(a + ".rope.scale_linear"));
    if (!(factor > 0) || !std::isfinite(factor)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                     ".rope.scale_linear = ", factor,
                                                     ", expected a positive finite number"));
    }
    if (factor != 1.0) rope_scaling = {{"type", "linear"}, {"factor", factor}};
  }

  // Llama 3.1+: llama.cpp's converter stores the llama3 scheme's per-frequency divisors as
  // tensor rope_freqs.weight (ggml divides each frequency by its value).
  std::vector<float> freq_divisors;
  if (const TensorInfo* t = f.FindTensor(kRopeFreqs); t != nullptr) {
    if (t->type != TensorType::kF32 || t->numel() != head_dim / 2 || t->data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.path(), ": tensor '", kRopeFreqs, "' must be F32 with head_dim / 2 = ", head_dim / 2,
          " values, got type ", static_cast<int>(t->type), " and ", t->numel(), " values"));
    }
    if (!rope_scaling.is_null()) {
      return absl::UnimplementedError(absl::StrCat(
          f.path(), ": tensor '", kRopeFreqs, "' together with ", a, ".rope.scaling.type '",
          rope_scaling["type"].get<std::string>(), "' is not supported"));
    }
    freq_divisors.resize(static_cast<size_t>(head_dim / 2));
    std::memcpy(freq_divisors.data(), t->data, freq_divisors.size() * sizeof(float));
    for (size_t i = 0; i < freq_divisors.size(); ++i) {
      if (!(freq_divisors[i] > 0) || !std::isfinite(freq_divisors[i])) {
        return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", kRopeFreqs,
                                                       "' value ", i, " is ", freq_divisors[i],
                                                       ", expected a positive finite number"));
      }
    }
  }

  // Phi-3 (llama.cpp's Phi3MiniModel converter): the longrope factors as tensors
  // rope_factors_long / rope_factors_short (F32, head_dim / 2 values each), the original
  // context as rope.scaling.original_context_length, the attention factor it computed as
  // rope.scaling.attn_factor; sliding_window 0 for none.
  const bool phi3 = a == "phi3";
  json longrope;  // null: none
  std::optional<int64_t> original_context;
  std::optional<int64_t> sliding_window;
  if (phi3) {
    const TensorInfo* factors[2] = {f.FindTensor(kRopeFactorsShort),
                                    f.FindTensor(kRopeFactorsLong)};
    if ((factors[0] == nullptr) != (factors[1] == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensors '", kRopeFactorsShort,
                                                     "' and '", kRopeFactorsLong,
                                                     "' must both be present or both absent"));
    }
    if (f.Has(a + ".rope.scaling.original_context_length")) {
      ASSIGN_OR_RETURN(original_context,
                       RequiredPositive(f, a + ".rope.scaling.original_context_length"));
    }
    if (f.Has(a + ".attention.sliding_window")) {
      ASSIGN_OR_RETURN(const int64_t window, f.GetInt(a + ".attention.sliding_window"));
      if (window < 0 || window > (1 << 30)) {
        return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                       ".attention.sliding_window = ", window,
                                                       ", expected 0 (none) or a positive size"));
      }
      if (window > 0) sliding_window = window;
    }
    if (factors[0] != nullptr) {
      if (!rope_scaling.is_null()) {
        return absl::UnimplementedError(
            absl::StrCat(f.path(), ": longrope factors together with ", a, ".rope.scaling.type '",
                         rope_scaling["type"].get<std::string>(), "' are not supported"));
      }
      if (!original_context.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat(f.path(), ": ", a,
                         ".rope.scaling.original_context_length is required with longrope "
                         "factors"));
      }
      longrope = {{"type", "longrope"}};
      for (int k = 0; k < 2; ++k) {
        const TensorInfo* t = factors[k];
        if (t->type != TensorType::kF32 || t->numel() != head_dim / 2 || t->data == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              f.path(), ": tensor '", t->name, "' must be F32 with head_dim / 2 = ", head_dim / 2,
              " values, got type ", static_cast<int>(t->type), " and ", t->numel(), " values"));
        }
        std::vector<float> v(static_cast<size_t>(head_dim / 2));
        std::memcpy(v.data(), t->data, v.size() * sizeof(float));
        json list = json::array();
        for (const float x : v) {
          if (!(x > 0) || !std::isfinite(x)) {
            return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", t->name,
                                                           "' holds ", x,
                                                           ", expected positive finite numbers"));
          }
          list.push_back(static_cast<double>(x));
        }
        longrope[k == 0 ? "short_factor" : "long_factor"] = std::move(list);
      }
    }
  }

  // Gemma 2 (llama.cpp's Gemma2Model converter and loader): attention.sliding_window
  // (default 4096) on the even layers, attn_logit_softcapping and final_logit_softcapping
  // (defaults 50 and 30), always applied. The file has no query_pre_attn_scalar: llama.cpp
  // scales queries by (embedding_length / head_count)^-0.5 for 46 layers (Gemma 2 27B, whose
  // query_pre_attn_scalar is 4608 / 32 = 144) and by head_size^-0.5 otherwise (2B and 9B,
  // whose query_pre_attn_scalar is their head size 256).
  const bool gemma2 = a == "gemma2";
  json gemma2_keys;
  if (gemma2) {
    int64_t window = 4096;
    if (f.Has(a + ".attention.sliding_window")) {
      ASSIGN_OR_RETURN(window, RequiredPositive(f, a + ".attention.sliding_window"));
    }
    gemma2_keys["sliding_window"] = window;
    for (const auto& [key, config_key, fallback] :
         {std::tuple<const char*, const char*, double>{".attn_logit_softcapping",
                                                       "attn_logit_softcapping", 50.0},
          std::tuple<const char*, const char*, double>{".final_logit_softcapping",
                                                       "final_logit_softcapping", 30.0}}) {
      double cap = fallback;
      if (f.Has(a + key)) {
        absl::StatusOr<double> v = f.GetFloat(a + key);
        if (!v.ok()) return AsInvalid(v.status());
        if (!(*v > 0) || !std::isfinite(*v)) {
          return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, key, " = ", *v,
                                                         ", expected a positive finite number"));
        }
        cap = *v;
      }
      gemma2_keys[config_key] = cap;
    }
    gemma2_keys["query_pre_attn_scalar"] = layers == 46 ? hidden / heads : head_dim;
  }

  // Gemma 3 (llama.cpp's Gemma3Model converter and loader; the file loads as a gemma3_text
  // config): attention.sliding_window (required) on the local layers, which llama.cpp fixes
  // as every layer but each sixth (layer i global iff i % 6 == 5, sliding_window_pattern 6)
  // and rotates with base 10000 unscaled (also fixed: the file stores neither); the global
  // layers with rope.freq_base and the file's rope scaling. Queries are scaled by
  // (embedding_length / head_count)^-0.5 for 62 layers (Gemma 3 27B, whose
  // query_pre_attn_scalar is 5376 / 32 = 168) and by head_size^-0.5 otherwise (1B, 4B, 12B:
  // their head size 256). No logit soft-capping (llama.cpp's Gemma 3 graph has none).
  const bool gemma3 = a == "gemma3";
  json gemma3_keys;
  if (gemma3) {
    ASSIGN_OR_RETURN(const int64_t window, RequiredPositive(f, a + ".attention.sliding_window"));
    gemma3_keys = {{"model_type", "gemma3_text"},
                   {"sliding_window", window},
                   {"sliding_window_pattern", 6},
                   {"rope_local_base_freq", 10000.0},
                   {"query_pre_attn_scalar", layers == 62 ? hidden / heads : head_dim},
                   {"final_logit_softcapping", nullptr},
                   {"attn_logit_softcapping", nullptr}};
  }

  int64_t vocab = 0;
  if (const gguf::Value* tokens = f.Find("tokenizer.ggml.tokens"); tokens != nullptr) {
    vocab = static_cast<int64_t>(tokens->count);
  } else if (f.Has(a + ".vocab_size")) {
    ASSIGN_OR_RETURN(vocab, RequiredPositive(f, a + ".vocab_size"));
  } else if (const TensorInfo* embd = f.FindTensor("token_embd.weight");
             embd != nullptr && embd->ne.size() == 2) {
    vocab = embd->ne[1];
  }
  if (vocab <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": no vocabulary size: tokenizer.ggml.tokens, ", a,
                     ".vocab_size and tensor 'token_embd.weight' are all missing"));
  }

  json j = {{"model_type", a},
            {"hidden_size", hidden},
            {"intermediate_size", ffn},
            {"num_hidden_layers", layers},
            {"num_attention_heads", heads},
            {"num_key_value_heads", kv_heads.value_or(heads)},
            {"head_dim", head_dim},
            {"rms_norm_eps", *eps},
            {"rope_theta", theta},
            {"max_position_embeddings", context},
            {"vocab_size", vocab},
            {"tie_word_embeddings", f.FindTensor("output.weight") == nullptr}};
  if (!rope_scaling.is_null()) j["rope_scaling"] = rope_scaling;
  if (!longrope.is_null()) j["rope_scaling"] = longrope;
  if (original_context.has_value()) j["original_max_position_embeddings"] = *original_context;
  if (phi3) j["sliding_window"] = sliding_window.has_value() ? json(*sliding_window) : json();
  if (gemma2) j.update(gemma2_keys);
  if (gemma3) j.update(gemma3_keys);
  if (qwen_moe) j["model_type"] = qwen2moe ? "qwen2_moe" : "qwen3_moe";
  if (!moe.is_null()) {
    if (a == "llama") j["model_type"] = "mixtral";
    j.update(moe);
  }
  ASSIGN_OR_RETURN(const std::optional<int64_t> bos,
                   OptionalTokenId(f, "tokenizer.ggml.bos_token_id"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> eos,
                   OptionalTokenId(f, "tokenizer.ggml.eos_token_id"));
  if (bos.has_value()) j["bos_token_id"] = *bos;
  if (eos.has_value()) j["eos_token_id"] = *eos;
  absl::StatusOr<ModelConfig> config = ParseModelConfig(j.dump());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(f.path(), ": the metadata makes an invalid config: ",
                                     config.status().message()));
  }
  // The norm eps is f32 in the file: keep it bit-exact.
  config->norm_eps = static_cast<float>(*eps);
  // llama.cpp's converter stores Gemma's RMSNorm weights with the 1 already added (in f32,
  // as transformers' 1 + w): the file's values are the gains.
  if (a == "gemma" || gemma2 || gemma3) config->norm_gain_offset = 0.0f;
  if (phi3 && config->rope_scaling.type != RopeScalingType::kLongRope &&
      f.Has(a + ".rope.scaling.attn_factor")) {
    absl::StatusOr<double> v = f.GetFloat(a + ".rope.scaling.attn_factor");
    if (!v.ok()) return AsInvalid(v.status());
    if (*v != 1.0) {
      return absl::UnimplementedError(absl::StrCat(f.path(), ": ", a,
                                                   ".rope.scaling.attn_factor = ", *v,
                                                   " without longrope factors is not supported"));
    }
  }
  if (config->rope_scaling.type == RopeScalingType::kLongRope &&
      f.Has(a + ".rope.scaling.attn_factor")) {
    // The converter's attention factor (f32) must be the one transformers computes.
    absl::StatusOr<double> v = f.GetFloat(a + ".rope.scaling.attn_factor");
    if (!v.ok()) return AsInvalid(v.status());
    const double want = config->rope_scaling.attention_factor.value_or(1.0);
    if (static_cast<float>(*v) != static_cast<float>(want)) {
      return absl::UnimplementedError(absl::StrCat(
          f.path(), ": ", a, ".rope.scaling.attn_factor = ", *v,
          " differs from transformers' sqrt(1 + ln(context / original) / ln(original)) = ", want,
          ", which the runtime uses"));
    }
  }
  if (!freq_divisors.empty()) {
    config->rope_scaling.type = RopeScalingType::kFreqDivisors;
    config->rope_scaling.freq_divisors = std::move(freq_divisors);
  }
  return config;
}

namespace {

// How a tensor is held: its blocks as stored (matrices of KeptQuant types), its values as
// stored (F32 / F16 / BF16 in place; F16 / BF16 Q / K rows to reorder in an owned copy of the
// same type), or widened to an owned f32 copy (anything else, permuted F32 included).
enum class Holding { kBlocks, kInPlace, kWidened };

struct TensorPlan {
  Holding holding = Holding::kWidened;
  bool permute = false;
  int64_t heads = 0;
};

TensorPlan PlanTensor(const TensorInfo& t, const ModelConfig& config) {
  TensorPlan plan;
  const std::vector<int64_t> shape = t.TorchShape();
  const bool is_q = absl::StrContains(t.name, ".attn_q.");
  const bool is_k = absl::StrContains(t.name, ".attn_k.");
  plan.heads = is_q ? config.num_heads : config.num_kv_heads;
  // Permute only what has the expected row count; a misshapen tensor is reported by Model.
  // llama.cpp's converter interleaves Q / K rows for the llama architecture only (its qwen2
  // and qwen3 tensors are stored as in the checkpoint); a llama GGUF with experts loads as a
  // mixtral config.
  const bool llama = config.model_type == "llama" || config.model_type == "mixtral";
  plan.permute = llama && (is_q || is_k) && shape[0] == plan.heads * config.head_dim;
  // A matrix whose rows are not whole blocks (which ggml does not write) is widened.
  const kernels::QuantType kept = KeptQuant(t.type);
  // (3-D: stacked experts, split into matrices by AddTensorOrExperts.)
  if (kept != kernels::QuantType::kNone && (shape.size() == 2 || shape.size() == 3) &&
      shape.back() % kernels::QuantBlockElems(kept) == 0) {
    plan.holding = Holding::kBlocks;
  } else if (t.type == TensorType::kF16 || t.type == TensorType::kBF16 ||
             (t.type == TensorType::kF32 && !plan.permute)) {
    plan.holding = Holding::kInPlace;
  }
  return plan;
}

// RESOURCE_EXHAUSTED when the f32 copies of the widened tensors would not fit in what the
// process can still take: a K-quant file of a large model widens to 4 bytes per weight, and
// the kernel's OOM killer would otherwise end the load without a word.
absl::Status CheckWidenedBytes(const GgufFile& f, const ModelConfig& config, int64_t limit_bytes) {
  int64_t widened = 0;
  std::vector<std::string> types;
  for (const TensorInfo& t : f.tensors()) {
    if (IsRopeTensor(t.name, config.model_type) ||
        PlanTensor(t, config).holding != Holding::kWidened)
      continue;
    widened += t.numel() * static_cast<int64_t>(sizeof(float));
    const std::string type(TensorTypeName(t.type));
    if (std::find(types.begin(), types.end(), type) == types.end()) types.push_back(type);
  }
  const std::optional<int64_t> limit =
      limit_bytes >= 0 ? std::optional<int64_t>(limit_bytes) : AvailableMemoryBytes();
  if (!limit.has_value() || widened <= *limit) return absl::OkStatus();
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: its %s tensors are widened to f32 at load, which needs %.2f GiB; this process can "
      "take %.2f GiB (MemAvailable, and the cgroup's memory limit). SpanServe computes in "
      "place on F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, "
      "IQ4_NL and IQ4_XS only: use such a file, or more memory",
      f.path(), absl::StrJoin(types, ", "), static_cast<double>(widened) / kGiB,
      static_cast<double>(*limit) / kGiB));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightStore>> GgufWeights(std::shared_ptr<const GgufFile> file,
                                                         const ModelConfig& config,
                                                         int64_t widen_limit_bytes) {
  const GgufFile& f = *file;
  RETURN_IF_ERROR(CheckWidenedBytes(f, config, widen_limit_bytes));
  // Widening runs on every CPU the process may use (one pool for the whole load).
  const std::shared_ptr<ThreadPool> pool = SharedThreadPool(AvailableCpus());
  UsePool use(pool.get());
  std::unique_ptr<WeightStore> store = WeightStore::CreateEmpty(f.path());
  for (const TensorInfo& t : f.tensors()) {
    if (IsRopeTensor(t.name, config.model_type)) continue;  // read by GgufModelConfig
    const std::string name =
        RuntimeName(t.name, config.moe.layout == MoeLayout::kMixtral, config.model_type == "phi3",
                    config.model_type == "gemma2" || config.model_type == "gemma3_text");
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", t.name,
                                                     "' is not a tensor of a ", config.model_type,
                                                     " model this runtime knows"));
    }
    const std::string origin = absl::StrCat(f.path(), " as '", t.name, "'");
    TensorView view;
    view.shape = t.TorchShape();
    // qwen2moe's shared-expert gate: llama.cpp's [hidden] vector is the checkpoint's
    // [1, hidden] matrix.
    if (view.shape.size() == 1 && absl::EndsWith(name, ".shared_expert_gate.weight")) {
      view.shape = {1, view.shape[0]};
    }
    const TensorPlan plan = PlanTensor(t, config);
    const bool permute = plan.permute;
    const int64_t heads = plan.heads;
    // Matrices in Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q2_K .. Q6_K / IQ4_NL / IQ4_XS stay in
    // their blocks (the kernels compute with exactly the dequantized values); Q and K rows are
    // reordered as whole rows of blocks.
    if (plan.holding == Holding::kBlocks) {
      view.quant = KeptQuant(t.type);
      view.data = t.data;
      if (permute) {
        const int64_t bytes = view.bytes();
        std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes]);
        std::memcpy(copy.get(), t.data, bytes);
        UnpermuteRows(copy.get(), view.shape[0], bytes / view.shape[0], heads);
        f.ReleasePages(t);
        view.data = copy.get();
        store->Own(std::move(copy));
      }
      RETURN_IF_ERROR(AddTensorOrExperts(*store, name, std::move(view), origin));
      continue;
    }
    if (plan.holding == Holding::kInPlace) {
      view.dtype = t.type == TensorType::kF32   ? DType::kF32
                   : t.type == TensorType::kF16 ? DType::kF16
                                                : DType::kBF16;
      view.data = t.data;
      if (permute) {
        // The rows reordered in their own type: a bf16 / f16 Q or K matrix stays one, so the
        // bf16 dot products take it and decode reads half the bytes of an f32 copy.
        const int64_t bytes = t.numel() * static_cast<int64_t>(DTypeSize(view.dtype));
        std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes]);
        std::memcpy(copy.get(), t.data, bytes);
        UnpermuteRows(copy.get(), view.shape[0], bytes / view.shape[0], heads);
        f.ReleasePages(t);
        view.data = copy.get();
        store->Own(std::move(copy));
      }
      RETURN_IF_ERROR(AddTensorOrExperts(*store, name, std::move(view), origin));
      continue;
    }
    const int64_t n = t.numel();
    std::unique_ptr<float[]> buffer(new float[n]);
    RETURN_IF_ERROR(gguf::DequantizeToF32(f, t, std::span<float>(buffer.get(), n)));
    f.ReleasePages(t);
    if (permute) {
      const int64_t cols = view.shape.size() == 2 ? view.shape[1] : 1;
      UnpermuteRows(buffer.get(), view.shape[0], cols * static_cast<int64_t>(sizeof(float)), heads);
    }
    view.dtype = DType::kF32;
    view.data = buffer.get();
    store->Own(std::move(buffer));
    RETURN_IF_ERROR(AddTensorOrExperts(*store, name, std::move(view), origin));
  }
  store->KeepAlive(std::move(file));
  return store;
}

}  // namespace spanserve::model
